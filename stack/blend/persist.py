"""Save, load and apply a fitted blend: the estimator, its feature layout, the task it scores (targets, scales,
metric), how it maps predictions to the grid, and the fingerprints of the caches it was fitted on (data, folds,
each member's). Saved as arrays + JSON (stack.state, no pickle); loading refuses a mismatch and names the member.

    save_blend(fitted)                                   # models/blend/blender.{json,safetensors}
    fitted = load_blend(expect={"models": {"minilm": fingerprint}})   # refuses a blend fitted on other members
    scores = predict_blend(fitted, {"minilm": frame})    # frame: id, pred_*, emb_* of NEW essays
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from stack import paths, state
from stack.blend.conformal import Intervals, difficulty
from stack.blend.features import Layout, aligned, matrix
from stack.blend.grid import Thresholds, mapped
from stack.errors import StackError
from stack.task import Task, from_record

FORMAT = 3
READS = (2, 3)  # format 2: saved before tasks (stack.renamed): FB3, ``round_to_grid`` for ``grid``


@state.savable
@dataclass
class FittedBlend:
    method: str
    layout: Layout
    estimator: object  # fitted blender, (n, d) -> (n, k)
    fingerprints: dict  # {"data": str, "folds": str, "models": {name: config hash}}
    grid: str = "none"  # none | round | thresholds: how predictions reach the grid (chosen by nested CV)
    thresholds: Thresholds | None = None  # grid: thresholds
    intervals: Intervals | None = None  # per-essay intervals, calibrated on the nested OOF residuals
    cv: dict = field(default_factory=dict)  # nested and in-sample CV of this blend, in the task's metric
    version: str = ""
    task_record: dict | None = None  # Task.record() of the task it scores; None: FB3
    format: int = FORMAT

    @property
    def task(self) -> Task:
        return from_record(self.task_record, "the saved blend")

    def finish(self, pred: np.ndarray) -> np.ndarray:
        """The blender's ``(n, k)`` output -> scores: clipped to each target's range, on its grid if CV said so."""
        return mapped(self.task, self.grid, pred, self.thresholds)

    def to_state(self) -> dict:
        return {k: getattr(self, k) for k in ("method", "layout", "estimator", "fingerprints", "grid", "thresholds",
                                              "intervals", "cv", "version", "task_record", "format")}

    @classmethod
    def from_state(cls, saved: dict):
        saved = dict(saved)
        if "round_to_grid" in saved:  # format 2 (stack.renamed)
            saved["grid"] = "round" if saved.pop("round_to_grid") else "none"
        return cls(**saved)


def blend_file(folder: Path | None = None) -> Path:
    """The saved blend's stem: ``<folder>/blender`` (.json + .safetensors); default models/blend/."""
    return Path(folder or paths.blend_dir()) / "blender"


def save_blend(fitted: FittedBlend, folder: Path | None = None) -> list[Path]:
    """Write ``fitted`` as ``<folder>/blender.{json,safetensors}`` (default models/blend/)."""
    return state.save(fitted, blend_file(folder), info={"method": fitted.method, "members": list(fitted.layout.models)})


def check_blend(fitted: FittedBlend, expect: dict, where: str = "") -> None:
    """Refuse ``fitted`` unless its fingerprints equal ``expect`` (any of ``data``, ``folds``, ``models``)."""
    where = where or str(state.files(blend_file())[0])
    have = fitted.fingerprints
    for key in ("data", "folds"):
        if key in expect and expect[key] != have.get(key):
            what = {"data": "other essays", "folds": "other folds"}[key]
            raise StackError(f"{where}: blend was fitted on {what} ({key} {have.get(key)} != {expect[key]}); rerun `stack blend`")
    want_models = expect.get("models", {})
    for name in fitted.layout.models:
        if name in want_models and want_models[name] != have["models"].get(name):
            raise StackError(f"{where}: model {name!r} has changed since the blend was fitted (config "
                             f"{have['models'].get(name)} != {want_models[name]}); rerun `stack blend` on its new cache")
    unknown = sorted(set(want_models) - set(fitted.layout.models))
    if unknown:
        raise StackError(f"{where}: blend was fitted on {', '.join(fitted.layout.models)}, not on {unknown[0]!r}; "
                         f"pass --models {','.join(fitted.layout.models)} or rerun `stack blend`")


def load_blend(folder: Path | None = None, expect: dict | None = None) -> FittedBlend:
    """Read a saved blend; with ``expect`` (see ``check_blend``) refuse one fitted on other caches."""
    import stack.blend.registry  # noqa: F401 (registers every blender class a saved blend may hold)

    stem = blend_file(folder)
    fitted = state.load(stem, "run `stack blend`")
    where = str(state.files(stem)[0])
    if not isinstance(fitted, FittedBlend) or fitted.format not in READS:
        raise StackError(f"{where}: not a blend saved by this version of stack; rerun `stack blend`")
    check_blend(fitted, expect or {}, where)
    return fitted


def predict_blend(fitted: FittedBlend, frames: dict[str, pd.DataFrame], texts=None,
                  interval: float | None = None) -> pd.DataFrame:
    """Scores of new essays: ``frames`` {model: DataFrame[id, pred_*, emb_*]} -> DataFrame[id, *targets] (the
    saved task's columns); with ``interval`` (a coverage level) also ``<target>_lo``, ``<target>_hi`` for each
    target, which need ``texts`` (the essays, in the first frame's row order).

    Rows follow the first model's frame; every model must cover the same ids. Scores are clipped to each target's
    range (and put on its grid when the saved blend says CV chose it)."""
    task = fitted.task
    missing = [m for m in fitted.layout.models if m not in frames]
    if missing:
        raise StackError(f"no features for model {missing[0]!r}: the blend needs {', '.join(fitted.layout.models)}")
    first = frames[fitted.layout.models[0]]
    frames = aligned({m: frames[m] for m in fitted.layout.models}, first[task.id], task.id)
    raw = np.asarray(fitted.estimator.predict(matrix(frames, fitted.layout)), np.float64).reshape(len(first), task.k)
    pred = fitted.finish(raw)
    out = pd.DataFrame(pred, columns=list(task.targets))
    out.insert(0, task.id, first[task.id].to_numpy())
    if interval:
        if fitted.intervals is None:
            raise StackError("the saved blend has no intervals (blend.interval: 0, or saved before intervals existed); "
                             "rerun `stack blend` (or re-export the bundle) to score with --interval")
        members = [frames[m][list(task.pred_cols)].to_numpy(np.float64) for m in fitted.layout.models]
        lo, hi = fitted.intervals.bounds(pred, difficulty(task, pred, members, texts), interval)
        for j, t in enumerate(task.targets):
            out[f"{t}_lo"], out[f"{t}_hi"] = lo[:, j], hi[:, j]
    return out


def _zero_members(est, layout) -> list[int]:
    """Positions (in ``layout.pred_models``) of members a preds-only linear blend gives weight zero on every target."""
    from stack.blend.weights import WeightBlender
    from stack.heads.ridge import Ridge

    k = len(layout.pred_cols)
    if isinstance(est, WeightBlender):
        return [j for j in range(len(layout.pred_models)) if not np.any(est.weights_[:, j])]
    if type(est) is Ridge:
        return [j for j in range(len(layout.pred_models)) if not np.any(est.coef_[j * k:(j + 1) * k])]
    return []


def prune_zero(fitted: FittedBlend) -> FittedBlend:
    """The same blend without the members it weights at zero (weight blenders and ridge on predictions only;
    any other blend comes back unchanged). Predictions are unchanged: the dropped columns were multiplied by 0."""
    from dataclasses import replace

    from stack.blend.weights import WeightBlender, candidate_columns

    layout, est = fitted.layout, fitted.estimator
    drop = _zero_members(est, layout) if layout.features == "preds" and layout.n_emb == 0 else []
    if not drop or len(drop) == len(layout.pred_models):
        return fitted
    keep = [j for j in range(len(layout.pred_models)) if j not in drop]
    names = [layout.pred_models[j] for j in keep]
    k = len(layout.pred_cols)
    cols = np.concatenate([np.arange(j * k, (j + 1) * k) for j in keep])
    est = type(est).from_state(est.to_state())  # a copy
    est.n_features_in_ = len(cols)
    if isinstance(est, WeightBlender):
        est.weights_ = est.weights_[:, keep]
        est.columns_ = candidate_columns(len(cols), k)
    else:
        est.coef_, est.mean_, est.scale_ = est.coef_[cols], est.mean_[cols], est.scale_[cols]
    layout = Layout(tuple(names), layout.features, tuple(0 for _ in names), tuple(names), layout.pred_cols)
    models = {m: v for m, v in fitted.fingerprints["models"].items() if m in names}
    return replace(fitted, layout=layout, estimator=est, fingerprints={**fitted.fingerprints, "models": models})
