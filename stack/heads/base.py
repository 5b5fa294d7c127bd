"""Plumbing shared by every head and blender: input validation, 1-D/2-D targets, scikit-learn tags, and saving
as arrays + JSON (stack.state) -- the constructor's parameters plus the fitted attributes named in ``FITTED``.

    @savable
    class MyHead(RegressorBase):
        FITTED = ("coef_",)           # fit -> self._start_fit(X, y) ; predict -> self._finish(P)
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted, validate_data

BASE_FITTED = ("n_features_in_", "n_outputs_", "y_1d_")


def unit_rows(X: np.ndarray) -> np.ndarray:
    """Each row scaled to unit Euclidean length (an all-zero row stays zero)."""
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


class RegressorBase(RegressorMixin, BaseEstimator):
    """A multi-output regressor ``(n, d) -> (n, k)``; 1-D ``y`` gives 1-D predictions."""

    FITTED: ClassVar[tuple[str, ...]] = ()
    SPARSE: ClassVar[bool] = False  # accepts scipy.sparse X

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        tags.input_tags.sparse = self.SPARSE
        return tags

    def _start_fit(self, X, y) -> tuple[np.ndarray, np.ndarray]:
        """Validate; -> X ``(n, d)`` float64, Y ``(n, k)`` float64; sets ``n_features_in_``, ``n_outputs_``."""
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True, dtype=np.float64,
                             accept_sparse="csr" if self.SPARSE else False)
        y = np.asarray(y, dtype=np.float64)
        self.y_1d_ = y.ndim == 1
        Y = y.reshape(len(y), -1)
        self.n_outputs_ = Y.shape[1]
        return X, Y

    def _start_predict(self, X):
        check_is_fitted(self, "n_outputs_")
        return validate_data(self, X, reset=False, dtype=np.float64, accept_sparse="csr" if self.SPARSE else False)

    def _finish(self, P: np.ndarray) -> np.ndarray:
        P = np.asarray(P, dtype=np.float64).reshape(P.shape[0], self.n_outputs_)
        return P[:, 0] if self.y_1d_ else P

    def to_state(self) -> dict:
        fitted = {k: getattr(self, k) for k in BASE_FITTED + self.FITTED if hasattr(self, k)}
        return {"params": self.get_params(deep=False), "fitted": fitted}

    @classmethod
    def from_state(cls, state: dict):
        params = {k: tuple(v) if isinstance(v, list) else v for k, v in state["params"].items()}
        obj = cls(**params)
        for k, v in state["fitted"].items():
            setattr(obj, k, v)
        return obj
