"""A head whose input preparation is fitted on its training rows only: the rows are ``[embedding | statistics]``
(the last ``n_stats`` columns: text statistics), and before the head sees them

- the embedding part is reduced to its top ``pca`` principal components (centre and directions from the training
  rows), when ``pca`` > 0;
- the statistics are standardised (mean and scale of the training rows);
- with ``block``, the standardised statistics are scaled to unit length as one more block beside the embedding's
  unit-length hidden-state blocks, and each row to unit length (the FB3 recipe for a kernel over concatenated
  blocks: every block weighs the same).

Fold heads stay apart in a bundle (no ``average``): each fold's preparation is its own.

    head = PreparedHead(KernelRidge(), n_stats=60, block=True).fit(X, Y)     # X (n, d_emb + 60), Y (n, k)
    head = PreparedHead(LGBMBlender(), n_stats=60, pca=64).fit(X, Y)
"""

from __future__ import annotations

import numpy as np
from sklearn.base import clone

from stack.heads.base import RegressorBase, unit_rows
from stack.state import savable


@savable
class PreparedHead(RegressorBase):
    FITTED = ("mean_", "scale_", "center_", "components_", "head_")

    def __init__(self, head=None, n_stats=0, block=False, pca=0):
        self.head = head
        self.n_stats = n_stats
        self.block = block
        self.pca = pca

    def _split(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cut = X.shape[1] - self.n_stats
        return X[:, :cut], X[:, cut:]

    def _prepare(self, X: np.ndarray) -> np.ndarray:
        E, S = self._split(X)
        if self.pca:
            E = (E - self.center_) @ self.components_.T
        Z = (S - self.mean_) / self.scale_
        if self.block and self.n_stats:
            Z = unit_rows(Z)
        X = np.hstack([E, Z])
        return unit_rows(X) if self.block else X

    def fit(self, X, y):
        X, Y = self._start_fit(X, y)
        if not 0 <= self.n_stats <= X.shape[1]:
            raise ValueError(f"n_stats={self.n_stats} but X has {X.shape[1]} columns")
        E, S = self._split(X)
        self.mean_ = S.mean(0)
        scale = S.std(0)
        self.scale_ = np.where(scale > 1e-12, scale, 1.0)
        self.center_ = E.mean(0) if self.pca else np.zeros(0)
        # at most min(rows, columns) directions exist (a debug run's few rows give fewer than asked)
        self.components_ = np.linalg.svd(E - self.center_, full_matrices=False)[2][: self.pca] if self.pca else \
            np.zeros((0, E.shape[1]))
        self.head_ = clone(self.head).fit(self._prepare(X), Y)
        return self

    def predict(self, X):
        X = self._start_predict(X)
        return self._finish(self.head_.predict(self._prepare(X)))

    def to_state(self) -> dict:  # the unfitted head is not saved: the fitted one (head_) says what it was
        state = super().to_state()
        state["params"].pop("head")
        return state

    @classmethod
    def from_state(cls, state: dict):
        obj = super().from_state(state)
        obj.head = clone(obj.head_)
        return obj

    @property
    def alpha_(self):
        return self.head_.alpha_
