"""Save, load and apply a fitted blend: the estimator, its feature layout and the fingerprints of the caches
it was fitted on (data, folds, each model's config hash). Loading refuses a mismatch and names the model.

    save_blend(fitted)                                   # models/blend/blender.joblib
    fitted = load_blend(expect=cache_fingerprints(["minilm"]))   # refuses a blend fitted on other caches
    scores = predict_blend(fitted, {"minilm": frame})    # frame: text_id, pred_*, emb_* of NEW essays
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import joblib
import numpy as np
import pandas as pd

from stack import paths
from stack.blend.features import Layout, aligned, matrix
from stack.errors import StackError
from stack.schema import ID, SCORE_MAX, SCORE_MIN, SCORE_STEP, TARGETS

FORMAT = 1


@dataclass
class FittedBlend:
    method: str
    layout: Layout
    estimator: object  # fitted blender, (n, d) -> (n, 6)
    fingerprints: dict  # {"data": str, "folds": str, "models": {name: config hash}}
    round_to_grid: bool = False  # CV said rounding to the 0.5 grid helps
    cv: dict = field(default_factory=dict)  # nested and in-sample MCRMSE of this blend
    version: str = ""
    format: int = FORMAT


def blend_file() -> Path:
    return paths.blend_dir() / "blender.joblib"


def postprocess(pred: np.ndarray, round_to_grid: bool) -> np.ndarray:
    """Clip ``(n, 6)`` scores to [1, 5]; optionally round to the 0.5 grid."""
    pred = np.clip(pred, SCORE_MIN, SCORE_MAX)
    if round_to_grid:
        pred = np.clip(np.round(pred / SCORE_STEP) * SCORE_STEP, SCORE_MIN, SCORE_MAX)
    return pred


def save_blend(fitted: FittedBlend, path: Path | None = None) -> Path:
    """joblib-dump ``fitted`` (atomically) to ``path`` (default models/blend/blender.joblib)."""
    from stack.cache import atomic_write

    return atomic_write(Path(path or blend_file()), lambda p: joblib.dump(fitted, p))


def check_blend(fitted: FittedBlend, expect: dict, where: str = "") -> None:
    """Refuse ``fitted`` unless its fingerprints equal ``expect`` (any of ``data``, ``folds``, ``models``)."""
    where = where or str(blend_file())
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


def load_blend(path: Path | None = None, expect: dict | None = None) -> FittedBlend:
    """Read a saved blend; with ``expect`` (see ``check_blend``) refuse one fitted on other caches."""
    from stack.cache import read_own_joblib

    path = Path(path or blend_file())
    fitted = read_own_joblib(path, "run `stack blend`")
    if not isinstance(fitted, FittedBlend) or fitted.format != FORMAT:
        raise StackError(f"{path}: not a blend saved by this version of stack; rerun `stack blend`")
    check_blend(fitted, expect or {}, str(path))
    return fitted


def cache_fingerprints(models) -> dict:
    """What the current caches of ``models`` were made with -> ``{"folds": str, "models": {name: config hash}}``:
    pass it as ``expect`` to ``load_blend`` to refuse a blend fitted on other stage-one models."""
    from stack.cache import read_model

    metas = {m: read_model(m, "test")[1] for m in models}
    folds = {meta.get("folds") for meta in metas.values()}
    out = {"models": {m: meta.get("config") for m, meta in metas.items()}}
    if len(folds) == 1:
        out["folds"] = folds.pop()
    return out


def predict_blend(fitted: FittedBlend, frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Scores of new essays: ``frames`` {model: DataFrame[text_id, pred_* x 6, emb_*]} -> DataFrame[text_id, *TARGETS].

    Rows follow the first model's frame; every model must cover the same text_ids. Scores are clipped to
    [1, 5] (and rounded to the 0.5 grid when the saved blend says CV chose it).
    """
    missing = [m for m in fitted.layout.models if m not in frames]
    if missing:
        raise StackError(f"no features for model {missing[0]!r}: the blend needs {', '.join(fitted.layout.models)}")
    first = frames[fitted.layout.models[0]]
    frames = aligned({m: frames[m] for m in fitted.layout.models}, first[ID])
    pred = postprocess(np.asarray(fitted.estimator.predict(matrix(frames, fitted.layout))), fitted.round_to_grid)
    out = pd.DataFrame(pred, columns=list(TARGETS))
    out.insert(0, ID, first[ID].to_numpy())
    return out
