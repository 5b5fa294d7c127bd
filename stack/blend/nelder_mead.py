"""Per-target blend weights found by Nelder-Mead (scipy.optimize.minimize), optionally bounded.

Weights are free (they need not sum to 1) and there is no intercept: ``pred_t = P_t @ w_t``.

    est = NelderMeadBlender(bounds=(0.0, 1.0)).fit(P, y)   # P (n, 6 * m) model-major predictions, y (n, 6)
    est.weights_                                          # (6, m)
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize

from stack.blend.weights import WeightBlender, candidate_columns
from stack.state import savable


@savable
class NelderMeadBlender(WeightBlender):
    """``bounds``: None (free weights) or ``(low, high)`` applied to every weight; starts from equal weights."""

    def __init__(self, bounds=None, max_iter=None, xatol=1e-6, fatol=1e-10):
        self.bounds = bounds
        self.max_iter = max_iter
        self.xatol = xatol
        self.fatol = fatol

    def _fit_target(self, P: np.ndarray, y: np.ndarray) -> np.ndarray:
        m = P.shape[1]
        bounds = None if self.bounds is None else [tuple(self.bounds)] * m
        if bounds is not None and not bounds[0][0] < bounds[0][1]:
            raise ValueError(f"bounds must be (low, high) with low < high, got {self.bounds!r}")
        x0 = np.full(m, 1.0 / m)
        if bounds is not None:
            x0 = np.clip(x0, *bounds[0])
        # Mean squared error, not RMSE: same minimiser, smoother near the optimum.
        res = minimize(lambda w: np.mean((P @ w - y) ** 2), x0, method="Nelder-Mead", bounds=bounds,
                       options={"maxiter": self.max_iter or 400 * m, "xatol": self.xatol, "fatol": self.fatol})
        return res.x, res.nit

    def fit(self, X, y):
        X, Y = self._start_fit(X, y)
        cols = candidate_columns(X.shape[1], Y.shape[1])
        self.columns_ = cols
        fits = [self._fit_target(X[:, cols[t]], Y[:, t]) for t in range(Y.shape[1])]
        self.weights_ = np.array([w for w, _ in fits])
        self.n_iter_ = np.array([n for _, n in fits])
        return self
