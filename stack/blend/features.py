"""Per-model cache frames -> the blender's feature matrix, with a ``Layout`` that rebuilds it for new essays.

A frame has the cache schema: the task's id, ``pred_<target>`` for its k targets, optional ``emb_<i>``. X puts
every used embedding block first (model order), then the used prediction blocks, model-major (model 0's k
targets, ...).

    layout = make_layout(frames, ["minilm", "mpnet"], "both", task)
    X = matrix(frames, layout)            # (n, sum(emb dims) + k * n_models)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from stack.cache import emb_columns
from stack.errors import StackError
from stack.state import savable
from stack.task import Task

FEATURE_SETS = ("emb", "preds", "both")


@savable
@dataclass(frozen=True)
class Layout:
    models: tuple[str, ...]
    features: str
    emb_dims: tuple[int, ...]  # embedding width used per model, 0 where none is used
    pred_models: tuple[str, ...]  # models whose prediction columns are features
    pred_cols: tuple[str, ...] = Task().pred_cols  # each model's prediction columns: one per target

    @property
    def n_emb(self) -> int:
        return int(sum(self.emb_dims))

    def emb_columns(self) -> np.ndarray:
        return np.arange(self.n_emb)

    def pred_columns(self) -> np.ndarray:
        return np.arange(self.n_emb, self.n_emb + len(self.pred_cols) * len(self.pred_models))

    def to_state(self) -> dict:
        return {"models": list(self.models), "features": self.features, "emb_dims": list(self.emb_dims),
                "pred_models": list(self.pred_models), "pred_cols": list(self.pred_cols)}

    @classmethod
    def from_state(cls, saved: dict):
        # saved before tasks (stack.renamed): no pred_cols, FB3's
        pred_cols = tuple(saved.get("pred_cols") or Task().pred_cols)
        return cls(tuple(saved["models"]), saved["features"], tuple(saved["emb_dims"]), tuple(saved["pred_models"]),
                   pred_cols)


def check_features(features: str) -> str:
    if features not in FEATURE_SETS:
        raise StackError(f"unknown features {features!r} (valid: {', '.join(FEATURE_SETS)})")
    return features


def make_layout(frames: dict[str, pd.DataFrame], models: list[str], features: str, task: Task, no_emb=()) -> Layout:
    """Which columns of which member feed the blender; a member without embeddings, or in ``no_emb`` (its
    embeddings saw the labels: schema.LEAKY_EMBEDDINGS), contributes its predictions instead."""
    check_features(features)
    dims = [len(emb_columns(frames[m])) if features in ("emb", "both") and m not in no_emb else 0 for m in models]
    preds = [m for m, d in zip(models, dims) if features in ("preds", "both") or d == 0]
    return Layout(tuple(models), features, tuple(dims), tuple(preds), task.pred_cols)


def aligned(frames: dict[str, pd.DataFrame], ids, id_col: str, where: str = "") -> dict[str, pd.DataFrame]:
    """Every frame re-ordered to ``ids`` (joined on the ``id_col`` column, never on row order); they must match
    exactly."""
    ids = pd.Index(np.asarray(ids))
    out = {}
    for name, df in frames.items():
        got = pd.Index(df[id_col])
        missing, extra = ids.difference(got), got.difference(ids)
        if len(missing) or len(extra):
            eg = (missing if len(missing) else extra)[0]
            raise StackError(f"{where or name}: model {name!r} covers other essays ({len(missing)} missing, {len(extra)} extra, "
                             f"e.g. {eg!r}); rebuild its features for the same essays")
        out[name] = df.set_index(id_col).loc[ids].reset_index()
    return out


def matrix(frames: dict[str, pd.DataFrame], layout: Layout) -> np.ndarray:
    """Feature matrix ``(n, d)`` float64 of aligned ``frames`` in ``layout``'s column order."""
    blocks = []
    for name, dim in zip(layout.models, layout.emb_dims):
        if name not in frames:
            raise StackError(f"no features for model {name!r}: the blend was fitted on {', '.join(layout.models)}")
        if dim:
            cols = emb_columns(frames[name])
            if len(cols) != dim:
                raise StackError(f"model {name!r}: {len(cols)} embedding columns, the blend was fitted on {dim}; "
                                 "fit the member with the config its cache was written with")
            blocks.append(frames[name][cols].to_numpy(np.float64))
    for name in layout.pred_models:
        blocks.append(frames[name][list(layout.pred_cols)].to_numpy(np.float64))
    return np.hstack(blocks)
