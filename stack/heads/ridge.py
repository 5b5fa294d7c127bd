"""Ridge regression with its alpha chosen per target by exact leave-one-out error: every member's linear head
(frozen embeddings, text statistics, TF-IDF) and stage two's ``ridge`` blender.

One eigendecomposition of the smaller Gram matrix, then every alpha is cheap (the same estimator as scikit-learn's
``RidgeCV(alpha_per_target=True)`` with its efficient LOO, 2.2x faster on 3,000 standardised dims). Dense X is
standardised first (``standardize=True``); sparse X (TF-IDF) is used as it is and centred implicitly through its
Gram matrix, so it is never densified.

    head = Ridge(alphas=(1, 10, 100)).fit(X, Y)      # X (n, p) dense or CSR, Y (n, k) -> predict (m, k)
    head.alpha_                                      # (k,) chosen per target
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from stack.heads.base import RegressorBase
from stack.state import savable

ALPHAS = tuple(float(a) for a in np.logspace(-1, 5, 13))


def loo_errors(lam: np.ndarray, U: np.ndarray, UtY: np.ndarray, Y: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    """Exact leave-one-out MSE ``(len(alphas), k)`` of ridge with an unpenalised intercept, from the eigensystem of
    the centred Gram (or kernel) matrix: eigenvalues ``lam (r,)``, eigenvectors ``U (n, r)``, ``U' Y`` and the
    centred ``Y (n, k)``. Each alpha costs one matrix product."""
    n, U2 = len(U), U**2
    errors = np.empty((len(alphas), Y.shape[1]))
    for i, a in enumerate(alphas):
        shrink = lam / (lam + a)  # (r,)
        fitted = U @ (shrink[:, None] * UtY)  # (n, k), Y centred so the intercept adds 0
        h = 1.0 / n + U2 @ shrink  # (n,) leverage incl. the intercept
        errors[i] = np.mean(((Y - fitted) / (1.0 - h)[:, None]) ** 2, axis=0)
    return errors


def loo_ridge(X, Y: np.ndarray, alphas: np.ndarray):
    """Ridge on ``X (n, p)`` (centred if dense; sparse X is centred implicitly) and centred ``Y (n, k)``, alpha per
    target by exact leave-one-out error. The intercept is unpenalised (the constant direction is the smoother's
    ``1/n``). -> (coef ``(p, k)``, alpha ``(k,)``, LOO MSE ``(len(alphas), k)``)."""
    n, p = X.shape
    sparse = sp.issparse(X)
    dual = sparse or n <= p
    if sparse:  # Gram of the centred rows: H K H with H = I - 11'/n
        K = np.asarray((X @ X.T).todense(), dtype=np.float64)
        K -= K.mean(axis=0, keepdims=True)
        K -= K.mean(axis=1, keepdims=True)
        lam, Q = np.linalg.eigh(K)
    else:
        lam, Q = np.linalg.eigh(X @ X.T if dual else X.T @ X)
    keep = lam > lam.max() * 1e-12 if lam.size else lam > 0
    lam, Q = lam[keep], Q[:, keep]
    U = Q if dual else (X @ Q) / np.sqrt(lam)  # (n, r): left singular vectors of the centred X
    UtY = U.T @ Y  # (r, k)
    errors = loo_errors(lam, U, UtY, Y, alphas)
    alpha = alphas[np.argmin(errors, axis=0)]
    if dual:  # the dual coefficients sum to 0 (Q is orthogonal to the constant), so X' A = X_centred' A
        coef = X.T @ (Q @ (UtY / (lam[:, None] + alpha[None, :])))
    else:
        coef = Q @ ((Q.T @ (X.T @ Y)) / (lam[:, None] + alpha[None, :]))
    return np.asarray(coef), alpha, errors


@savable
class Ridge(RegressorBase):
    """Standardise (dense X), then ridge with alpha chosen per target by exact leave-one-out CV on the rows fitted."""

    FITTED = ("mean_", "scale_", "coef_", "intercept_", "alpha_")
    SPARSE = True

    def __init__(self, alphas=ALPHAS, standardize=True):
        self.alphas = alphas
        self.standardize = standardize

    def fit(self, X, y):
        X, Y = self._start_fit(X, y)
        alphas = np.asarray(self.alphas, dtype=np.float64)
        y_mean = Y.mean(axis=0)
        if sp.issparse(X):
            self.mean_ = np.asarray(X.mean(axis=0)).ravel()
            self.scale_ = np.ones(X.shape[1])
            coef, self.alpha_, self.loo_mse_ = loo_ridge(X, Y - y_mean, alphas)
        else:
            self.mean_ = X.mean(axis=0)
            scale = X.std(axis=0) if self.standardize else np.ones(X.shape[1])
            self.scale_ = np.where(scale > 1e-12 * max(1.0, np.abs(self.mean_).max(initial=0.0)), scale, 1.0)
            coef, self.alpha_, self.loo_mse_ = loo_ridge((X - self.mean_) / self.scale_, Y - y_mean, alphas)
        self.coef_ = coef / self.scale_[:, None]  # on raw X: predict = (X - mean) @ coef + y_mean
        self.intercept_ = y_mean - self.mean_ @ self.coef_
        return self

    def predict(self, X):
        X = self._start_predict(X)
        return self._finish(np.asarray(X @ self.coef_) + self.intercept_)

    @classmethod
    def average(cls, heads: list[Ridge]) -> Ridge:
        """One ridge predicting the mean of ``heads`` (fitted on the same features): the mean of affine maps."""
        first = heads[0]
        out = cls(first.alphas, first.standardize)
        for k in ("n_features_in_", "n_outputs_", "y_1d_"):
            setattr(out, k, getattr(first, k))
        out.mean_, out.scale_ = np.zeros(first.n_features_in_), np.ones(first.n_features_in_)
        out.coef_ = np.mean([h.coef_ for h in heads], axis=0)
        out.intercept_ = np.mean([h.intercept_ for h in heads], axis=0)
        out.alpha_ = np.exp(np.mean([np.log(h.alpha_) for h in heads], axis=0))  # for information only
        return out
