"""What the weight blenders (hill climbing, Nelder-Mead) share: the layout of candidate columns and the blend.

Predictions of m members for k targets sit side by side in X, member-major: member 0's k columns, then member
1's, ... so target t's candidates are columns t, t + k, t + 2k, ...
"""

from __future__ import annotations

import numpy as np

from stack.heads.base import RegressorBase


def candidate_columns(n_features: int, n_targets: int) -> np.ndarray:
    """Column indices ``(k, m)`` of each target's candidates in member-major prediction features."""
    if n_features % n_targets:
        raise ValueError(
            f"weight blenders need one prediction column per (member, target): got {n_features} features for "
            f"{n_targets} targets, which is not a multiple"
        )
    m = n_features // n_targets
    return np.arange(m)[None, :] * n_targets + np.arange(n_targets)[:, None]


def rmse(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.sqrt(np.mean((y - p) ** 2)))


class WeightBlender(RegressorBase):
    """Per-target weights ``weights_ (k, m)`` over the candidate columns ``columns_ (k, m)``."""

    FITTED = ("columns_", "weights_", "n_iter_")

    def predict(self, X):
        X = self._start_predict(X)
        return self._finish(np.einsum("nkm,km->nk", X[:, self.columns_], self.weights_))
