"""Epsilon-SVR with an RBF kernel, one per target, saved as its support vectors and dual coefficients.

The kernel matrix is computed once and shared by the six targets (scikit-learn's SVR on a precomputed kernel);
prediction is the kernel expansion ``K(x, support) @ dual + intercept``, in numpy. Rows are standardised
(``standard``), scaled to unit length (``l2``: the FB3 SVR-on-embeddings recipe) or used as they are (``none``).

    svr = KernelSVR(C=1.0, scaling="l2").fit(X, Y)        # X (n, d), Y (n, k) -> predict (m, k)
"""

from __future__ import annotations

import numpy as np

from stack.heads.base import RegressorBase, unit_rows
from stack.heads.kernel_ridge import sq_dists
from stack.state import savable

SCALINGS = ("standard", "l2", "none")


def rbf(A: np.ndarray, B: np.ndarray, gamma: float) -> np.ndarray:
    """``exp(-gamma * |a - b|^2)`` for every row pair -> ``(len(A), len(B))``."""
    return np.exp(-gamma * sq_dists(A, B))


@savable
class KernelSVR(RegressorBase):
    """``gamma``: a number, or ``scale`` (1 / (d * variance of the scaled rows), scikit-learn's default)."""

    FITTED = ("center_", "scale_", "gamma_", "support_", "dual_", "intercept_")

    def __init__(self, C=1.0, epsilon=0.1, gamma="scale", scaling="standard"):
        self.C = C
        self.epsilon = epsilon
        self.gamma = gamma
        self.scaling = scaling

    def _scaled(self, X: np.ndarray) -> np.ndarray:
        if self.scaling == "l2":
            return unit_rows(X)
        return (X - self.center_) / self.scale_

    def fit(self, X, y):
        from sklearn.svm import SVR

        if self.scaling not in SCALINGS:
            raise ValueError(f"unknown scaling {self.scaling!r} (valid: {', '.join(SCALINGS)})")
        X, Y = self._start_fit(X, y)
        standard = self.scaling == "standard"
        self.center_ = X.mean(axis=0) if standard else np.zeros(X.shape[1])
        std = X.std(axis=0) if standard else np.ones(X.shape[1])
        self.scale_ = np.where(std > 1e-12, std, 1.0)
        Z = self._scaled(X)
        var = Z.var()
        self.gamma_ = float(1.0 / (Z.shape[1] * var) if var > 0 else 1.0) if self.gamma == "scale" else float(self.gamma)
        K = rbf(Z, Z, self.gamma_)
        fits = [SVR(kernel="precomputed", C=self.C, epsilon=self.epsilon).fit(K, Y[:, t]) for t in range(Y.shape[1])]
        used = np.unique(np.concatenate([f.support_ for f in fits]))
        self.support_ = Z[used]
        self.dual_ = np.zeros((Y.shape[1], len(used)))
        for t, f in enumerate(fits):
            self.dual_[t, np.searchsorted(used, f.support_)] = f.dual_coef_[0]
        self.intercept_ = np.array([f.intercept_[0] for f in fits])
        return self

    def predict(self, X):
        X = self._start_predict(X)
        return self._finish(rbf(self._scaled(X), self.support_, self.gamma_) @ self.dual_.T + self.intercept_)
