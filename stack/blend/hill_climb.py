"""Greedy hill climbing (ensemble selection with replacement) over models' OOF predictions, per target.

Start from the best single model; at each step mix one model in, ``blend <- (1 - w) * blend + w * model``,
choosing the model and the grid weight ``w`` that lower the RMSE most. A model may be picked again (with
replacement), so weights accumulate; with ``negative=True`` ``w`` may also be below zero (subtracting a model's
errors, which the FB3 3rd-place team found helps). Weights always sum to 1.

    est = HillClimbBlender(negative=True).fit(P, y)   # P (n, 6 * m): member-major predictions; y (n, 6)
    est.weights_                                       # (6, m)
"""

from __future__ import annotations

import numpy as np

from stack.blend.weights import WeightBlender, candidate_columns, rmse
from stack.state import savable


def hill_climb(P: np.ndarray, y: np.ndarray, grid: np.ndarray, max_iter: int, tol: float) -> tuple[np.ndarray, list[float]]:
    """Candidates ``P (n, m)``, target ``y (n,)`` -> weights ``(m,)`` summing to 1 and the RMSE after each step."""
    errors = np.sqrt(np.mean((P - y[:, None]) ** 2, axis=0))
    best = int(np.argmin(errors))
    weights = np.zeros(P.shape[1])
    weights[best] = 1.0
    blend = P[:, best].copy()
    history = [float(errors[best])]
    n = len(y)
    for _ in range(max_iter):
        r = y - blend
        E = P - blend[:, None]  # (n, m): direction towards each candidate
        rr, re, ee = r @ r, r @ E, np.einsum("ij,ij->j", E, E)
        # ||r - w e||^2 = rr - 2 w re + w^2 ee for every (candidate, grid weight) at once
        loss = rr - 2 * np.outer(re, grid) + np.outer(ee, grid**2)
        j, g = np.unravel_index(np.argmin(loss), loss.shape)
        new = float(np.sqrt(max(loss[j, g], 0.0) / n))
        if history[-1] - new <= tol:
            break
        w = grid[g]
        weights *= 1 - w
        weights[j] += w
        blend = (1 - w) * blend + w * P[:, j]
        history.append(rmse(y, blend))
    return weights, history


@savable
class HillClimbBlender(WeightBlender):
    """Per-target hill-climbing weights over prediction columns laid out model-major (see ``candidate_columns``).

    ``step``: grid spacing of the mixing weight; ``max_weight``: largest |w| per step; ``negative``: allow w < 0.
    """

    def __init__(self, negative=False, step=0.01, max_weight=0.5, max_iter=200, tol=1e-7):
        self.negative = negative
        self.step = step
        self.max_weight = max_weight
        self.max_iter = max_iter
        self.tol = tol

    def _grid(self) -> np.ndarray:
        pos = np.arange(1, int(round(self.max_weight / self.step)) + 1) * self.step
        if len(pos) == 0:
            raise ValueError(f"max_weight={self.max_weight} is smaller than step={self.step}")
        return np.concatenate([-pos[::-1], pos]) if self.negative else pos

    def fit(self, X, y):
        X, Y = self._start_fit(X, y)
        cols = candidate_columns(X.shape[1], Y.shape[1])
        grid = self._grid()
        fits = [hill_climb(X[:, cols[t]], Y[:, t], grid, self.max_iter, self.tol) for t in range(Y.shape[1])]
        self.columns_ = cols
        self.weights_ = np.array([w for w, _ in fits])
        self.history_ = [h for _, h in fits]
        self.n_iter_ = np.array([len(h) for h in self.history_])  # steps tried, the last one found no gain
        return self
