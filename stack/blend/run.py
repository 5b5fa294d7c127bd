"""Run stage two: read model caches, check they belong together, score every method honestly, write outputs.

Each method gets two scores on the same folds as stage one: *in-sample* (fitted on all OOF rows and scored on
them, what most notebooks print) and *nested* (fitted without the fold being scored). The nested score is the
honest one; the chosen method's full fit makes the submission and is saved for ``stack predict``.

    stack blend --models base,large --method hill       # submission.csv, metrics/cv.json, models/blend/
"""

from __future__ import annotations

import json
import time
from dataclasses import replace

import numpy as np
import pandas as pd

from stack import __version__, cache, paths
from stack.blend.config import BlendConfig, load_blend_config
from stack.blend.features import aligned, check_features, make_layout, matrix
from stack.blend.intervals import bootstrap_ci, paired_bootstrap
from stack.blend.persist import FittedBlend, postprocess, predict_blend, save_blend
from stack.blend.registry import features_for, get_blender
from stack.errors import StackError
from stack.metrics import mcrmse
from stack.schema import FOLD, ID, LEAKY_EMBEDDINGS, PRED_COLS, TARGETS
from stack.stages import Context, load_context


def load_frames(ctx: Context, models: list[str]):
    """Cache frames aligned to the essays -> ({member: train frame}, {member: test frame}, {member: fingerprint})."""
    if not models:
        raise StackError("no members given: pass --models a,b,... (members with a cache under cache/)")
    train, test, metas = {}, {}, {}
    for name in models:
        paths.check_name(name)
        if not paths.member_cache(name).is_dir():
            have = sorted(p.name for p in paths.CACHE.iterdir() if p.is_dir()) if paths.CACHE.is_dir() else []
            raise StackError(f"member {name!r} has no cache at {paths.member_cache(name)} (cached: {', '.join(have) or 'none'}); "
                             f"run `stack fit {name}` or `dvc repro`")
        train[name], metas[name] = cache.read_member(name, "train")
        test[name], _ = cache.read_member(name, "test")
        train.update(aligned({name: train[name]}, ctx.train[ID], str(paths.cache_file(name, "train"))))
        test.update(aligned({name: test[name]}, ctx.test[ID], str(paths.cache_file(name, "test"))))
    cache.check_fingerprints(metas, {"data": ctx.data_fp, "folds": ctx.folds_fp})
    for name, meta in metas.items():  # a head must have been fitted on its input's current cache
        if "input" in meta:
            cache.check_input(name, meta, (metas.get(meta["input"]) or cache.member_fingerprint(meta["input"]))["config"])
    return train, test, metas


def oof_of(frame: pd.DataFrame) -> np.ndarray:
    """The six prediction columns of a cache frame -> ``(n, 6)``."""
    return frame[list(PRED_COLS)].to_numpy(np.float64)


def score(y: np.ndarray, pred: np.ndarray) -> dict:
    overall, per = mcrmse(y, pred)
    return {"mcrmse": overall, "per_target": per}


def nested_and_in_sample(make, X: np.ndarray, y: np.ndarray, fold: np.ndarray):
    """-> (nested OOF ``(n, 6)``: each fold predicted by a blender fitted on the others,
    in-sample ``(n, 6)``: one blender fitted on all rows predicting them, that fitted blender)."""
    nested = np.zeros_like(y, dtype=np.float64)
    for k in np.unique(fold):
        valid = fold == k
        nested[valid] = make().fit(X[~valid], y[~valid]).predict(X[valid])
    full = make().fit(X, y)
    return nested, full.predict(X), full


def options_from(cfg: BlendConfig) -> BlendConfig:
    """params.yaml ``blend:`` with its blender knobs checked (bounds, svr_scaling), bounds as a tuple."""
    from stack.heads.svr import SCALINGS

    if cfg.bounds is not None and (len(cfg.bounds) != 2 or not cfg.bounds[0] < cfg.bounds[1]):
        raise StackError(f"params.yaml: blend.bounds must be [low, high] with low < high (or null), got {list(cfg.bounds)}")
    if cfg.svr_scaling not in SCALINGS:
        raise StackError(f"params.yaml: blend.svr_scaling {cfg.svr_scaling!r} is not one of {', '.join(SCALINGS)}")
    return replace(cfg, bounds=tuple(cfg.bounds) if cfg.bounds else None)


def weights_table(est, layout) -> dict | None:
    """{target: {model: weight}} of a weight blender (or of the weight member of a stack), else None."""
    members = [est] + [m for _, m, _ in getattr(est, "members_", [])]
    for m in members:
        if hasattr(m, "weights_"):
            return {t: {name: float(w) for name, w in zip(layout.pred_models, row)} for t, row in zip(TARGETS, m.weights_)}
    return None


LEAK = ("--features both lets {method} see a model's embeddings AND its OOF predictions: the per-fold heads "
        "that made those predictions were fitted on the held-out fold's labels, so same-fold CV is badly optimistic "
        "(frozen minilm, ridge: 0.471 reported vs 0.558 when stage one is refitted inside each fold). "
        "Use --features emb or preds, or --method stack (ridge on embeddings + hill climbing on predictions)")


def check_honest(method: str, features: str) -> None:
    """Refuse a combination whose same-fold nested CV is not honest (see ``LEAK``)."""
    if get_blender(method).inputs == "any" and features == "both":
        raise StackError(LEAK.format(method=method))




def evaluate(method: str, features: str, train: dict, models: list[str], y, fold, options: BlendConfig,
             kinds: dict | None = None) -> dict:
    """Nested and in-sample CV of one method -> dict with arrays (``nested``, ``in_sample``) and the fitted blender.
    ``kinds``: {member: kind}: a member whose OOF embeddings saw the labels (a fine-tuned one) is blended on its
    predictions only."""
    entry = get_blender(method)
    check_honest(method, features)
    leaky = [m for m in models if (kinds or {}).get(m) in LEAKY_EMBEDDINGS]
    layout = make_layout(train, models, features_for(method, features), leaky)
    X = matrix(train, layout)
    t0 = time.perf_counter()
    nested, in_sample, full = nested_and_in_sample(lambda: entry.make(layout, options), X, y, fold)
    return {"layout": layout, "nested": postprocess(nested, False), "in_sample": postprocess(in_sample, False),
            "estimator": full, "seconds": time.perf_counter() - t0}


def summarize(y: np.ndarray, runs: dict, method: str, train: dict, try_rounding: bool, n_boot: int):
    """cv.json's content for the chosen ``method`` among ``runs`` -> (result, nested OOF ``(n, 6)``, rounded?).

    Intervals: a 95% bootstrap interval of the blend's nested MCRMSE, and paired bootstrap intervals of its gain
    over the best single member and over every other method (resampling essays; ``n_boot`` 0 leaves them out)."""
    chosen = runs[method]
    rounded = postprocess(chosen["nested"], True)
    use_round = try_rounding and mcrmse(y, rounded)[0] < mcrmse(y, chosen["nested"])[0]
    nested = rounded if use_round else chosen["nested"]
    single = {n: score(y, oof_of(f)) for n, f in train.items()}
    best = min(single, key=lambda n: single[n]["mcrmse"])
    blend_score = score(y, nested)
    in_sample = score(y, postprocess(chosen["in_sample"], use_round))
    result = {
        "method": method, "features": chosen["layout"].features, "models": list(train),
        "blend": {**blend_score, "in_sample": in_sample, "optimism": blend_score["mcrmse"] - in_sample["mcrmse"]},
        "single": single,
        "best_single": {"model": best, "mcrmse": single[best]["mcrmse"]},
        "gain_over_best_single": single[best]["mcrmse"] - blend_score["mcrmse"],
        "methods": {m: {"features": r["layout"].features, "nested": score(y, r["nested"]),
                        "in_sample": score(y, r["in_sample"])} for m, r in runs.items()},
        "rounding": {"tried": try_rounding, "nested_rounded": mcrmse(y, rounded)[0], "applied": bool(use_round)},
        "weights": weights_table(chosen["estimator"], chosen["layout"]),
        "n_rows": int(len(y)),
    }
    if n_boot:
        result["blend"]["ci95"] = list(bootstrap_ci(y, nested, n_boot))
        result["gain_over_best_single_ci95"] = paired_bootstrap(y, nested, oof_of(train[best]), n_boot)
        for m, r in runs.items():
            if m != method:
                result["methods"][m]["gain_of_chosen"] = paired_bootstrap(y, nested, r["nested"], n_boot)
    return result, nested, use_round


def run_blend(params, models: list[str], method: str, features: str, compare: list[str] | None = None,
              options: BlendConfig | None = None, try_rounding: bool | None = None) -> dict:
    """``stack blend``: score ``method`` and every ``compare`` method, write submission.csv, metrics/cv.json,
    models/blend/{blender.json, blender.safetensors, oof.parquet, blend.json}; returns what cv.json holds."""
    cfg = load_blend_config(params)
    get_blender(method)
    check_features(features)
    compare = [m for m in (compare if compare is not None else cfg.compare) if m != method]
    check_honest(method, features)
    options = options or options_from(cfg)
    try_rounding = cfg.round if try_rounding is None else try_rounding
    ctx = load_context(params)
    train, test, metas = load_frames(ctx, models)
    y, fold = ctx.y, ctx.fold

    kinds = {m: meta.get("kind") for m, meta in metas.items()}
    # a compared method that reads any features is scored on predictions when `both` is asked for (one blender
    # must not see both); the chosen method was checked above
    runs = {m: evaluate(m, features if m == method or features != "both" else "preds", train, models, y, fold,
                        options, kinds) for m in dict.fromkeys([method, *compare])}
    chosen = runs[method]
    result, nested, use_round = summarize(y, runs, method, train, try_rounding, cfg.bootstrap)
    result["n_folds"] = int(len(np.unique(fold)))
    blend_score, in_sample = result["blend"], result["blend"]["in_sample"]
    fitted = FittedBlend(
        method=method, layout=chosen["layout"], estimator=chosen["estimator"], round_to_grid=bool(use_round),
        fingerprints={"data": ctx.data_fp, "folds": ctx.folds_fp, "models": {n: metas[n].get("config") for n in models}},
        cv={"nested": blend_score["mcrmse"], "in_sample": in_sample["mcrmse"]}, version=__version__,
    )
    # Timings vary run to run: they go to models/blend/blend.json, not to the metrics DVC compares.
    seconds = {m: round(r["seconds"], 2) for m, r in runs.items()}
    sub = predict_blend(fitted, test)
    sub = aligned({"submission": sub}, ctx.sample_ids[ID], "test predictions")["submission"]
    oof = pd.DataFrame({ID: ctx.train[ID].to_numpy(), FOLD: fold})
    for i, t in enumerate(TARGETS):
        oof[f"true_{t}"], oof[f"pred_{t}"] = y[:, i], nested[:, i]
    write_outputs(sub, result, fitted, oof, seconds)
    return result


def write_outputs(sub: pd.DataFrame, result: dict, fitted: FittedBlend | None = None, oof: pd.DataFrame | None = None,
                  seconds: dict | None = None) -> None:
    """submission.csv, metrics/cv.json and the saved blend, each written to a temp file and renamed."""
    outputs = [(paths.SUBMISSION, lambda p: sub.to_csv(p, index=False)),
               (paths.cv_metrics(), lambda p: p.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n"))]
    if fitted is not None:
        config = {"method": fitted.method, "layout": fitted.layout.__dict__, "fingerprints": fitted.fingerprints,
                  "round_to_grid": fitted.round_to_grid, "cv": fitted.cv, "estimator": repr(fitted.estimator),
                  "seconds": seconds or {}}
        outputs.append((paths.blend_dir() / "blend.json", lambda p: p.write_text(json.dumps(config, indent=2, default=list) + "\n")))
    for path, write in outputs:
        cache.atomic_write(path, write)
    if fitted is not None:
        save_blend(fitted)
    if oof is not None:
        cache.write_table(oof, paths.blend_dir() / "oof.parquet", {"method": result["method"], "models": result["models"]})
