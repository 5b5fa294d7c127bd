"""LightGBM per target (a blender, and the lgbm member's booster), saved in LightGBM's own text format (no pickle).

    est = LGBMBlender(n_jobs=2).fit(X, y)   # one booster per target, early stopping inside the training rows
"""

from __future__ import annotations

import inspect

import numpy as np

from stack.heads.base import RegressorBase
from stack.state import savable

_HAS_EVAL_X = None  # set on first use: lightgbm is imported lazily


@savable
class LGBMBlender(RegressorBase):
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

    FITTED = ("best_iterations_",)

    def predict(self, X):
        X = self._start_predict(X)
        return self._finish(np.column_stack([e.predict(X) for e in self.estimators_]))

    def to_state(self) -> dict:
        state = super().to_state()
        boosters = [getattr(e, "booster_", e) for e in self.estimators_]
        state["models"] = [b.model_to_string(num_iteration=n) for b, n in zip(boosters, self.best_iterations_)]
        return state

    @classmethod
    def from_state(cls, state: dict):
        import lightgbm

        obj = super().from_state(state)
        obj.estimators_ = [lightgbm.Booster(model_str=m) for m in state["models"]]
        return obj
