"""Blenders that learn from features (embeddings and/or OOF predictions): ridge, SVR, LightGBM, per target.

    est = RidgeBlender().fit(X, y)          # X (n, d), y (n, 6) -> predict (m, 6)
    est = LGBMBlender(n_jobs=2).fit(X, y)   # one booster per target, early stopping inside the training rows
"""

from __future__ import annotations

import inspect

import numpy as np
from sklearn.preprocessing import Normalizer, StandardScaler
from sklearn.svm import SVR

from stack.blend.base import BlenderBase

RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(-1, 5, 13))
SCALINGS = ("standard", "l2")
_HAS_EVAL_X = None  # set on first use: lightgbm is imported lazily


def loo_ridge(X: np.ndarray, Y: np.ndarray, alphas: np.ndarray):
    """Ridge on centred ``X (n, p)``, ``Y (n, k)`` with alpha per target by exact leave-one-out error.

    One eigendecomposition of the smaller Gram matrix (``X X^T`` if n <= p, else ``X^T X``), then every alpha is
    cheap. The intercept is unpenalised (X is centred, so the constant direction is the smoother's ``1/n``).
    -> (coef ``(p, k)``, alpha ``(k,)``, LOO MSE ``(len(alphas), k)``).
    """
    n, p = X.shape
    dual = n <= p
    lam, Q = np.linalg.eigh(X @ X.T if dual else X.T @ X)
    keep = lam > lam.max() * 1e-12 if lam.size else lam > 0
    lam, Q = lam[keep], Q[:, keep]
    U = Q if dual else (X @ Q) / np.sqrt(lam)  # (n, r): left singular vectors
    UtY = U.T @ Y  # (r, k)
    U2 = U**2
    errors = np.empty((len(alphas), Y.shape[1]))
    for i, a in enumerate(alphas):
        shrink = lam / (lam + a)  # (r,)
        fitted = U @ (shrink[:, None] * UtY)  # (n, k), Y centred so the intercept adds 0
        h = 1.0 / n + U2 @ shrink  # (n,) leverage incl. the intercept
        errors[i] = np.mean(((Y - fitted) / (1.0 - h)[:, None]) ** 2, axis=0)
    alpha = alphas[np.argmin(errors, axis=0)]
    if dual:
        coef = X.T @ (Q @ (UtY / (lam[:, None] + alpha[None, :])))
    else:
        coef = Q @ ((Q.T @ (X.T @ Y)) / (lam[:, None] + alpha[None, :]))
    return coef, alpha, errors


class RidgeBlender(BlenderBase):
    """Standardise, then ridge with alpha chosen per target by exact leave-one-out CV on the training rows.

    Same estimator as ``StandardScaler + RidgeCV(alpha_per_target=True)``, several times faster when the
    features are about as many as the rows (5 concatenated embeddings: 3,000 dims, 3,128 rows).
    """

    def __init__(self, alphas=RIDGE_ALPHAS):
        self.alphas = alphas

    def fit(self, X, y):
        X, Y = self._start_fit(X, y)
        self.mean_ = X.mean(axis=0)
        scale = X.std(axis=0)
        self.scale_ = np.where(scale > 1e-12 * max(1.0, np.abs(self.mean_).max(initial=0.0)), scale, 1.0)
        y_mean = Y.mean(axis=0)
        coef, self.alpha_, self.loo_mse_ = loo_ridge((X - self.mean_) / self.scale_, Y - y_mean,
                                                     np.asarray(self.alphas, dtype=np.float64))
        self.coef_ = coef
        self.intercept_ = y_mean
        return self

    def predict(self, X):
        X = self._start_predict(X)
        return self._finish((X - self.mean_) / self.scale_ @ self.coef_ + self.intercept_)


def _scaler(scaling: str):
    if scaling == "standard":
        return StandardScaler()
    if scaling == "l2":
        return Normalizer()
    raise ValueError(f"unknown scaling {scaling!r} (valid: {', '.join(SCALINGS)})")


class SVRBlender(BlenderBase):
    """One RBF support-vector regressor per target on standardised (``standard``) or unit-norm (``l2``) rows."""

    def __init__(self, C=1.0, epsilon=0.1, kernel="rbf", scaling="standard"):
        self.C = C
        self.epsilon = epsilon
        self.kernel = kernel
        self.scaling = scaling

    def fit(self, X, y):
        X, Y = self._start_fit(X, y)
        self.scaler_ = _scaler(self.scaling).fit(X)
        Z = self.scaler_.transform(X)
        self.estimators_ = [SVR(C=self.C, epsilon=self.epsilon, kernel=self.kernel).fit(Z, Y[:, t]) for t in range(Y.shape[1])]
        return self

    def predict(self, X):
        X = self._start_predict(X)
        Z = self.scaler_.transform(X)
        return self._finish(np.column_stack([e.predict(Z) for e in self.estimators_]))


class LGBMBlender(BlenderBase):
    """One LightGBM booster per target; early stopping on a random ``valid_fraction`` of the TRAINING rows only.

    The rows being predicted (an outer CV fold, the test set) never steer the number of trees.
    """

    def __init__(self, n_estimators=1000, learning_rate=0.05, num_leaves=15, min_child_samples=20,
                 colsample_bytree=0.3, subsample=0.8, reg_lambda=1.0, valid_fraction=0.15,
                 early_stopping_rounds=50, n_jobs=2, random_state=0):
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.colsample_bytree = colsample_bytree
        self.subsample = subsample
        self.reg_lambda = reg_lambda
        self.valid_fraction = valid_fraction
        self.early_stopping_rounds = early_stopping_rounds
        self.n_jobs = n_jobs
        self.random_state = random_state

    def _booster(self):
        global _HAS_EVAL_X
        from lightgbm import LGBMRegressor

        if _HAS_EVAL_X is None:
            _HAS_EVAL_X = "eval_X" in inspect.signature(LGBMRegressor.fit).parameters
        return LGBMRegressor(
            n_estimators=self.n_estimators, learning_rate=self.learning_rate, num_leaves=self.num_leaves,
            min_child_samples=self.min_child_samples, colsample_bytree=self.colsample_bytree,
            subsample=self.subsample, subsample_freq=1 if self.subsample < 1 else 0, reg_lambda=self.reg_lambda,
            n_jobs=self.n_jobs, random_state=self.random_state, verbose=-1,
        )

    def fit(self, X, y):
        import lightgbm

        X, Y = self._start_fit(X, y)
        rng = np.random.default_rng(self.random_state)
        n_valid = int(round(self.valid_fraction * len(X)))
        inner = len(X) - n_valid >= 2 and n_valid >= 2
        order = rng.permutation(len(X))
        valid, train = (order[:n_valid], order[n_valid:]) if inner else (order[:0], order)
        self.estimators_, self.best_iterations_ = [], []
        for t in range(Y.shape[1]):
            booster = self._booster()
            if inner:
                # lightgbm >= 4.7 deprecates eval_set in favour of eval_X / eval_y
                evals = ({"eval_X": (X[valid],), "eval_y": (Y[valid, t],)} if _HAS_EVAL_X
                         else {"eval_set": [(X[valid], Y[valid, t])]})
                booster.fit(X[train], Y[train, t], **evals,
                            callbacks=[lightgbm.early_stopping(self.early_stopping_rounds, verbose=False)])
            else:
                booster.fit(X, Y[:, t])
            self.estimators_.append(booster)
            self.best_iterations_.append(int(booster.best_iteration_ or booster.n_estimators))
        return self

    def predict(self, X):
        X = self._start_predict(X)
        return self._finish(np.column_stack([e.predict(X) for e in self.estimators_]))
