"""Plumbing shared by every blender: input validation, 1-D/2-D targets, scikit-learn tags.

    class MyBlender(BlenderBase): ...     # fit -> self._start_fit(X, y) ; predict -> self._finish(P)
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted, validate_data


class BlenderBase(RegressorMixin, BaseEstimator):
    """A multi-output regressor ``(n, d) -> (n, k)``; 1-D ``y`` gives 1-D predictions."""

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags

    def _start_fit(self, X, y) -> tuple[np.ndarray, np.ndarray]:
        """Validate; -> X ``(n, d)`` float64, Y ``(n, k)`` float64; sets ``n_features_in_``, ``n_outputs_``."""
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        self.y_1d_ = y.ndim == 1
        Y = y.reshape(len(y), -1)
        self.n_outputs_ = Y.shape[1]
        return X, Y

    def _start_predict(self, X) -> np.ndarray:
        check_is_fitted(self, "n_outputs_")
        return validate_data(self, X, reset=False, dtype=np.float64)

    def _finish(self, P: np.ndarray) -> np.ndarray:
        P = np.asarray(P, dtype=np.float64).reshape(len(P), self.n_outputs_)
        return P[:, 0] if self.y_1d_ else P


def candidate_columns(n_features: int, n_targets: int) -> np.ndarray:
    """Column indices ``(k, m)`` of each target's candidates in model-major prediction features.

    Predictions of m models for k targets sit side by side: model 0's k columns, then model 1's, ...
    so target t's candidates are columns t, t + k, t + 2k, ...
    """
    if n_features % n_targets:
        raise ValueError(
            f"weight blenders need one prediction column per (model, target): got {n_features} features for "
            f"{n_targets} targets, which is not a multiple"
        )
    m = n_features // n_targets
    return np.arange(m)[None, :] * n_targets + np.arange(n_targets)[:, None]


def rmse(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.sqrt(np.mean((y - p) ** 2)))
