"""A stack of blenders: the mean of several blenders, each fitted on its own columns of X.

    est = StackBlender([("ridge-emb", Ridge(), emb_cols), ("hill-preds", HillClimbBlender(), pred_cols)])
    est.fit(X, y).predict(X_new)          # mean of the members' (n, 6) predictions
"""

from __future__ import annotations

import numpy as np
from sklearn.base import clone

from stack.blend.hill_climb import HillClimbBlender
from stack.heads.base import RegressorBase
from stack.heads.ridge import Ridge
from stack.state import savable


@savable
class StackBlender(RegressorBase):
    """``members``: list of ``(name, estimator, columns)``; ``columns`` is None (all) or a list of indices.

    None means ridge on all columns + hill climbing on all columns.
    """

    FITTED = ("members_",)

    def __init__(self, members=None):
        self.members = members

    def _members(self):
        if self.members is None:
            return [("ridge", Ridge(), None), ("hill", HillClimbBlender(), None)]
        if not self.members:
            raise ValueError("members must name at least one (name, estimator, columns)")
        return self.members

    def fit(self, X, y):
        X, Y = self._start_fit(X, y)
        target = Y if not self.y_1d_ else Y[:, 0]
        self.members_ = []
        for name, est, cols in self._members():
            idx = np.arange(X.shape[1]) if cols is None else np.asarray(cols, dtype=np.int64)
            if idx.size == 0:
                raise ValueError(f"stack member {name!r} has no columns")
            self.members_.append((name, clone(est).fit(X[:, idx], target), idx))
        return self

    def predict(self, X):
        X = self._start_predict(X)
        preds = [np.asarray(est.predict(X[:, idx])).reshape(len(X), -1) for _, est, idx in self.members_]
        return self._finish(np.mean(preds, axis=0))
