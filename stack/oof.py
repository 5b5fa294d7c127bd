"""Cross-fitting on fixed folds: out-of-fold predictions for train, fold-mean predictions for test.

    oof, test_pred = cross_fit(make_model, X, y, fold, X_test)    # X (n, d), y (n, 6), fold (n,)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.linear_model import RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def cross_fit(make_model: Callable, X: np.ndarray, y: np.ndarray, fold: np.ndarray, X_test: np.ndarray):
    """Fit ``make_model()`` once per fold on the other folds -> (oof ``(n, k)``, test mean ``(m, k)``, models)."""
    oof = np.zeros(y.shape, dtype=np.float64)
    test_pred = np.zeros((len(X_test), y.shape[1]), dtype=np.float64)
    models = []
    folds = np.unique(fold)
    for k in folds:
        valid = fold == k
        model = make_model().fit(X[~valid], y[~valid])
        oof[valid] = model.predict(X[valid])
        test_pred += model.predict(X_test) / len(folds)
        models.append(model)
    return oof, test_pred, models


def ridge_head(alphas) -> Callable:
    """Standardise, then ridge with its alpha chosen per target by efficient leave-one-out CV."""
    return lambda: make_pipeline(StandardScaler(), RidgeCV(alphas=np.asarray(alphas, float), alpha_per_target=True))
