"""Run stage two: read model caches, check they belong together, cross-fit the blender, write outputs.

    stack blend --models minilm --method ridge        # submission.csv + metrics/cv.json
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from stack import cache, paths
from stack.blend.registry import get_blender
from stack.errors import StackError
from stack.metrics import mcrmse
from stack.oof import cross_fit
from stack.schema import ID, PRED_COLS, SCORE_MAX, SCORE_MIN, TARGETS
from stack.stages import Context, load_context

FEATURES = ("emb", "preds", "both")


def _aligned(df: pd.DataFrame, ids: pd.Series, where) -> pd.DataFrame:
    """Rows of ``df`` in the order of ``ids`` (joined on text_id, never on row order); ids must match exactly."""
    got, want = set(df[ID]), set(ids)
    if got != want:
        missing = sorted(want - got) or sorted(got - want)
        raise StackError(f"{where}: covers other essays than the data ({len(want - got)} missing, {len(got - want)} extra, e.g. {missing[0]!r}); rebuild it")
    return df.set_index(ID).loc[ids.to_numpy()].reset_index()


def load_features(ctx: Context, models: list[str], features: str):
    """Concatenated features of ``models`` -> (X_train ``(n, d)``, X_test ``(m, d)``, {model: OOF ``(n, 6)``})."""
    if features not in FEATURES:
        raise StackError(f"unknown features {features!r} (valid: {', '.join(FEATURES)})")
    if not models:
        raise StackError("no models given: pass --models a,b,... (models with a cache under cache/)")
    parts_train, parts_test, oofs, metas = [], [], {}, {}
    for name in models:
        paths.check_name(name)
        if not paths.model_cache(name).is_dir():
            have = sorted(p.name for p in paths.CACHE.iterdir() if p.is_dir()) if paths.CACHE.is_dir() else []
            raise StackError(f"model {name!r} has no cache at {paths.model_cache(name)} (cached: {', '.join(have) or 'none'}); run `stack embed {name}` or `dvc repro`")
        tr, meta = cache.read_model(name, "train")
        te, _ = cache.read_model(name, "test")
        metas[name] = meta
        tr = _aligned(tr, ctx.train[ID], paths.cache_file(name, "train"))
        te = _aligned(te, ctx.test[ID], paths.cache_file(name, "test"))
        oofs[name] = tr[list(PRED_COLS)].to_numpy()
        cols = []
        if features in ("emb", "both"):
            cols += cache.emb_columns(tr)
        if features in ("preds", "both") or not cols:
            cols += list(PRED_COLS)
        parts_train.append(tr[cols].to_numpy(np.float64))
        parts_test.append(te[cols].to_numpy(np.float64))
    cache.check_fingerprints(metas, {"data": ctx.data_fp, "folds": ctx.folds_fp})
    return np.hstack(parts_train), np.hstack(parts_test), oofs


def run_blend(params, models: list[str], method: str, features: str) -> dict:
    make = get_blender(method)
    ctx = load_context(params)
    X, X_test, oofs = load_features(ctx, models, features)
    oof, test_pred, _ = cross_fit(make, X, ctx.y, ctx.fold, X_test)
    score, per_target = mcrmse(ctx.y, oof)
    result = {
        "method": method, "features": features, "models": list(models),
        "blend": {"mcrmse": score, "per_target": per_target},
        "single": {n: dict(zip(("mcrmse", "per_target"), mcrmse(ctx.y, o))) for n, o in oofs.items()},
    }
    sub = pd.DataFrame(np.clip(test_pred, SCORE_MIN, SCORE_MAX), columns=list(TARGETS))
    sub.insert(0, ID, ctx.test[ID].to_numpy())
    sub = _aligned(sub, ctx.sample_ids[ID], "test predictions")
    write_outputs(sub, result)
    return result


def write_outputs(sub: pd.DataFrame, result: dict) -> None:
    """submission.csv and metrics/cv.json, each written to a temp file and renamed."""
    for path, write in ((paths.SUBMISSION, lambda p: sub.to_csv(p, index=False)),
                        (paths.cv_metrics(), lambda p: p.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n"))):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.atomic_path(path)
        try:
            write(tmp)
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
