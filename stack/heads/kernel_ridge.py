"""RBF kernel ridge regression, its kernel width and ridge alpha chosen per target by exact leave-one-out error.

The width is set relative to the data, label-free: ``gamma = scale / (2 * median squared distance)`` between the
training rows, for each ``scale`` in ``gamma_scales``. For each width the centred kernel is eigendecomposed once and
every alpha's leave-one-out error costs a matrix product (stack.heads.ridge.loo_errors, as the ridge's), so the
(gamma, alpha) grid is cheap; each target keeps the pair with the lowest LOO error. The fitted model is a kernel
expansion over its support rows (float32), one dual vector per target and kernel width.

    krr = KernelRidge(gamma_scales=(0.25, 0.5, 1.0)).fit(X, Y)     # X (n, d), Y (n, k) -> predict (m, k)
    one = KernelRidge.average(fold_heads)                           # the exact mean of heads on the same rows
"""

from __future__ import annotations

import numpy as np

from stack.heads.base import RegressorBase
from stack.heads.ridge import loo_errors
from stack.state import savable

ALPHAS = tuple(float(a) for a in np.logspace(-3, 2, 11))


def sq_dists(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances of every row pair -> ``(len(A), len(B))`` float64."""
    A, B = np.asarray(A, np.float64), np.asarray(B, np.float64)
    return np.maximum((A * A).sum(1)[:, None] + (B * B).sum(1)[None, :] - 2.0 * (A @ B.T), 0.0)


def loo_dual(K: np.ndarray, Y: np.ndarray, alphas: np.ndarray):
    """Kernel ridge with an unpenalised intercept on kernel ``K (n, n)`` and ``Y (n, k)``: exact LOO MSE of each alpha
    ``(len(alphas), k)`` and the eigensystem of the centred kernel (lam, Q, Q' Y_centred)."""
    Kc = K - K.mean(0, keepdims=True)
    Kc -= Kc.mean(1, keepdims=True)
    lam, Q = np.linalg.eigh(Kc)
    keep = lam > max(lam.max(), 0.0) * 1e-12
    lam, Q = lam[keep], Q[:, keep]
    Yc = Y - Y.mean(0)
    QtY = Q.T @ Yc
    return loo_errors(lam, Q, QtY, Yc, alphas), lam, Q, QtY


@savable
class KernelRidge(RegressorBase):
    """Per target: the (gamma scale, alpha) pair of least LOO error; ``predict`` sums one kernel expansion per width."""

    FITTED = ("support_", "gammas_", "duals_", "intercept_", "chosen_")

    def __init__(self, gamma_scales=(0.25, 0.5, 1.0), alphas=ALPHAS):
        self.gamma_scales = gamma_scales
        self.alphas = alphas

    def fit(self, X, y):
        X, Y = self._start_fit(X, y)
        D = sq_dists(X, X)
        median = float(np.median(D[np.triu_indices(len(D), 1)])) if len(D) > 1 else 1.0
        alphas = np.asarray(self.alphas, np.float64)
        gammas = [s / (2.0 * max(median, 1e-12)) for s in self.gamma_scales]
        best = [(np.inf, None, None)] * Y.shape[1]  # per target: (LOO error, gamma index, alpha index)
        systems, K_mean = [], []  # K_mean: each kernel's column means, for the intercept
        for g, gamma in enumerate(gammas):
            K = np.exp(-gamma * D)
            K_mean.append(K.mean(0))
            errors, lam, Q, QtY = loo_dual(K, Y, alphas)
            systems.append((lam, Q, QtY))
            for t in range(Y.shape[1]):
                i = int(np.argmin(errors[:, t]))
                if errors[i, t] < best[t][0]:
                    best[t] = (errors[i, t], g, i)
        self.gammas_ = np.asarray(gammas)
        self.duals_ = np.zeros((len(gammas), Y.shape[1], len(X)))
        for t, (_, g, i) in enumerate(best):
            lam, Q, QtY = systems[g]
            self.duals_[g, t] = Q @ (QtY[:, t] / (lam + alphas[i]))  # sums to 0: Q is orthogonal to the constant
        self.intercept_ = Y.mean(0) - np.einsum("mn,mkn->k", np.stack(K_mean), self.duals_)
        self.support_ = X.astype(np.float32)
        self.chosen_ = np.array([[self.gamma_scales[g], alphas[i]] for _, g, i in best])  # (k, 2), for information
        return self

    def predict(self, X):
        X = self._start_predict(X)
        D = sq_dists(X, self.support_)
        P = np.tile(self.intercept_, (len(X), 1))
        for gamma, dual in zip(self.gammas_, self.duals_):
            if np.any(dual):
                P += np.exp(-gamma * D) @ dual.T
        return self._finish(P)

    @property
    def alpha_(self):
        return self.chosen_[:, 1]

    @classmethod
    def average(cls, heads: list[KernelRidge]) -> KernelRidge:
        """One model predicting the mean of ``heads``: their support rows united (identical rows once), one dual
        per distinct kernel width. For the fold heads of one member, whose supports overlap in most rows."""
        rows: dict[bytes, int] = {}
        index = [[rows.setdefault(r.tobytes(), len(rows)) for r in h.support_] for h in heads]
        support = np.empty((len(rows), heads[0].support_.shape[1]), np.float32)
        for h, idx in zip(heads, index):
            support[idx] = h.support_
        gammas = sorted({float(g) for h in heads for g in h.gammas_})
        duals = np.zeros((len(gammas), heads[0].duals_.shape[1], len(rows)))
        for h, idx in zip(heads, index):
            for gamma, dual in zip(h.gammas_, h.duals_):  # add.at: identical rows (duplicate essays) all count
                np.add.at(duals[gammas.index(float(gamma))], (slice(None), idx), dual / len(heads))
        out = cls(heads[0].gamma_scales, heads[0].alphas)
        for k in ("n_features_in_", "n_outputs_", "y_1d_"):
            setattr(out, k, getattr(heads[0], k))
        out.support_, out.gammas_, out.duals_ = support, np.asarray(gammas), duals
        out.intercept_ = np.mean([h.intercept_ for h in heads], axis=0)
        out.chosen_ = np.mean([h.chosen_ for h in heads], axis=0)
        return out
