"""Cross-fitting on the fixed folds: out-of-fold predictions for train, fold-mean predictions for test.

    oof, test_pred, heads = cross_fit(make_head, X, y, fold, X_test)    # X (n, d), y (n, 6), fold (n,)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def cross_fit(make_head: Callable, X, y: np.ndarray, fold: np.ndarray, X_test):
    """Fit ``make_head()`` once per fold on the other folds -> (oof ``(n, k)``, test mean ``(m, k)``, heads).

    ``X`` / ``X_test``: anything row-indexable the head takes (arrays, CSR matrices, object arrays of texts)."""
    oof = np.zeros(y.shape, dtype=np.float64)
    test_pred = np.zeros((X_test.shape[0], y.shape[1]), dtype=np.float64)
    heads = []
    folds = np.unique(fold)
    for k in folds:
        valid = fold == k
        head = make_head().fit(X[~valid], y[~valid])
        oof[valid] = head.predict(X[valid])
        test_pred += head.predict(X_test) / len(folds)
        heads.append(head)
    return oof, test_pred, heads


def predict_heads(heads: list, X) -> np.ndarray:
    """Mean of the fold heads' predictions ``(n, 6)``, as for the test set in stage one."""
    return np.mean([h.predict(X) for h in heads], axis=0)
