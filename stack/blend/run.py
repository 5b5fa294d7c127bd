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
from stack.blend.conformal import Intervals, difficulty, nested_coverage
from stack.blend.features import aligned, check_features, make_layout, matrix
from stack.blend.grid import Thresholds, mapped, nested_thresholds
from stack.blend.intervals import bootstrap_ci, paired_bootstrap
from stack.blend.persist import FittedBlend, predict_blend, save_blend
from stack.blend.registry import features_for, get_blender
from stack.errors import StackError
from stack.metrics import get_metric, score, value
from stack.schema import FOLD, LEAKY_EMBEDDINGS
from stack.stages import Context, load_context


def load_frames(ctx: Context, models: list[str]):
    """Cache frames aligned to the essays -> ({member: train frame}, {member: test frame}, {member: meta})."""
    if not models:
        raise StackError("no members given: pass --models a,b,... (members with a cache under cache/)")
    task = ctx.task
    train, test, metas = {}, {}, {}
    for name in models:
        paths.check_name(name)
        if not paths.member_cache(name).is_dir():
            have = sorted(p.name for p in paths.CACHE.iterdir() if p.is_dir()) if paths.CACHE.is_dir() else []
            raise StackError(f"member {name!r} has no cache at {paths.member_cache(name)} (cached: {', '.join(have) or 'none'}); "
                             f"run `stack fit {name}` or `dvc repro`")
        train[name], metas[name] = cache.read_member(name, "train", task)
        test[name], _ = cache.read_member(name, "test", task)
        train.update(aligned({name: train[name]}, ctx.ids, task.id, str(paths.cache_file(name, "train"))))
        test.update(aligned({name: test[name]}, ctx.test[task.id], task.id, str(paths.cache_file(name, "test"))))
    cache.check_fingerprints(metas, ctx.expected())
    cache.with_inputs(models, lambda n: metas[n] if n in metas else cache.read_meta(n))  # heads on current inputs
    return train, test, metas


def oof_of(frame: pd.DataFrame, task) -> np.ndarray:
    """The prediction columns of a cache frame -> ``(n, k)``."""
    return frame[list(task.pred_cols)].to_numpy(np.float64)


def nested_and_in_sample(make, X: np.ndarray, y: np.ndarray, fold: np.ndarray):
    """-> (nested OOF ``(n, k)``: each fold predicted by a blender fitted on the others,
    in-sample ``(n, k)``: one blender fitted on all rows predicting them, that fitted blender)."""
    nested = np.zeros_like(y, dtype=np.float64)
    for k in np.unique(fold):
        valid = fold == k
        nested[valid] = np.asarray(make().fit(X[~valid], y[~valid]).predict(X[valid])).reshape(int(valid.sum()), -1)
    full = make().fit(X, y)
    return nested, np.asarray(full.predict(X)).reshape(y.shape), full


def options_from(cfg: BlendConfig, where: str = "params.yaml") -> BlendConfig:
    """params.yaml ``blend:`` with its blender knobs checked (bounds, svr_scaling), bounds as a tuple."""
    from stack.heads.svr import SCALINGS

    if not 0 <= cfg.interval < 1:
        raise StackError(f"{where}: blend.interval is a coverage level in (0, 1), or 0 for none; got {cfg.interval}")
    if cfg.bounds is not None and (len(cfg.bounds) != 2 or not cfg.bounds[0] < cfg.bounds[1]):
        raise StackError(f"{where}: blend.bounds must be [low, high] with low < high (or null), got {list(cfg.bounds)}")
    if cfg.svr_scaling not in SCALINGS:
        raise StackError(f"{where}: blend.svr_scaling {cfg.svr_scaling!r} is not one of {', '.join(SCALINGS)}")
    return replace(cfg, bounds=tuple(cfg.bounds) if cfg.bounds else None)


def weights_table(est, layout, targets) -> dict | None:
    """{target: {model: weight}} of a weight blender (or of the weight member of a stack), else None."""
    members = [est] + [m for _, m, _ in getattr(est, "members_", [])]
    for m in members:
        if hasattr(m, "weights_"):
            return {t: {name: float(w) for name, w in zip(layout.pred_models, row)} for t, row in zip(targets, m.weights_)}
    return None


LEAK = ("--features both lets {method} see a model's embeddings AND its OOF predictions: the per-fold heads "
        "that made those predictions were fitted on the held-out fold's labels, so same-fold CV is badly optimistic "
        "(frozen minilm, ridge: 0.471 reported vs 0.558 when stage one is refitted inside each fold). "
        "Use --features emb or preds, or --method stack (ridge on embeddings + hill climbing on predictions)")


def check_honest(method: str, features: str) -> None:
    """Refuse a combination whose same-fold nested CV is not honest (see ``LEAK``)."""
    if get_blender(method).inputs == "any" and features == "both":
        raise StackError(LEAK.format(method=method))


def evaluate(method: str, features: str, train: dict, models: list[str], task, y, fold, options: BlendConfig,
             kinds: dict | None = None) -> dict:
    """Nested and in-sample CV of one method -> dict with arrays (``nested``, ``in_sample``, clipped to each
    target's range) and the fitted blender. ``kinds``: {member: kind}: a member whose OOF embeddings saw the labels
    (a fine-tuned one) is blended on its predictions only."""
    entry = get_blender(method)
    check_honest(method, features)
    leaky = [m for m in models if (kinds or {}).get(m) in LEAKY_EMBEDDINGS]
    layout = make_layout(train, models, features_for(method, features), task, leaky)
    X = matrix(train, layout)
    t0 = time.perf_counter()
    nested, in_sample, full = nested_and_in_sample(lambda: entry.make(layout, options), X, y, fold)
    return {"layout": layout, "nested": task.clip(nested), "in_sample": task.clip(in_sample),
            "estimator": full, "seconds": time.perf_counter() - t0}


def choose_grid(task, y: np.ndarray, nested: np.ndarray, fold: np.ndarray, tried: bool):
    """How the blend's predictions reach each target's grid, by nested CV -> (mode, {mode: nested predictions},
    thresholds fitted on every nested row). Tried (``blend.round``, or a metric that scores grid values): plain
    rounding, and thresholds fitted inside each outer fold on the other folds' nested predictions; kept only where
    they beat the continuous predictions (QWK: rounding vs thresholds)."""
    modes = {"none": nested, "round": task.round(nested)}
    if not tried:
        return "none", modes, None
    modes["thresholds"] = nested_thresholds(task, y, nested, fold)
    if get_metric(task.metric).name == "qwk":  # QWK scores grid values: the continuous ones are not a candidate
        modes.pop("none")
    metric = get_metric(task.metric)
    mode = metric.best({m: value(task, y, p) for m, p in modes.items()})
    return mode, modes, Thresholds.fit(task, y, nested) if mode == "thresholds" else None


def summarize(task, y: np.ndarray, fold: np.ndarray, runs: dict, method: str, train: dict, try_grid: bool,
              n_boot: int):
    """cv.json's content for the chosen ``method`` among ``runs`` -> (result, nested OOF ``(n, k)``, grid mode,
    thresholds).

    Intervals: a 95% bootstrap interval of the blend's nested CV, and paired bootstrap intervals of its gain over
    the best single member and over every other method (resampling essays; ``n_boot`` 0 leaves them out)."""
    metric = get_metric(task.metric)
    m = metric.name
    chosen = runs[method]
    tried = try_grid or m == "qwk"
    mode, modes, thresholds = choose_grid(task, y, chosen["nested"], fold, tried)
    nested = modes[mode]
    single = {n: score(task, y, oof_of(f, task)) for n, f in train.items()}
    best = metric.best({n: s[m] for n, s in single.items()})
    blend_score = score(task, y, nested)
    in_sample = score(task, y, mapped(task, mode, chosen["in_sample"], thresholds))
    result = {
        "method": method, "features": chosen["layout"].features, "models": list(train),
        "blend": {**blend_score, "in_sample": in_sample, "optimism": metric.gain(in_sample[m], blend_score[m])},
        "single": single,
        "best_single": {"model": best, m: single[best][m]},
        "gain_over_best_single": metric.gain(blend_score[m], single[best][m]),
        "methods": {name: {"features": r["layout"].features, "nested": score(task, y, r["nested"]),
                           "in_sample": score(task, y, r["in_sample"])} for name, r in runs.items()},
        "rounding": {"tried": tried, "nested_rounded": value(task, y, modes["round"]),
                     "applied": False if mode == "none" else mode,
                     **({"nested_thresholds": value(task, y, modes["thresholds"])} if tried else {})},
        "weights": weights_table(chosen["estimator"], chosen["layout"], task.targets),
        "n_rows": int(len(y)),
    }
    if m != "mcrmse":  # FB3's metric is implied by its keys, as in every cv.json before tasks
        result["metric"] = {"name": m, "better": metric.better}
    if n_boot:
        result["blend"]["ci95"] = list(bootstrap_ci(task, y, nested, n_boot))
        result["gain_over_best_single_ci95"] = paired_bootstrap(task, y, nested, oof_of(train[best], task), n_boot)
        for name, r in runs.items():
            if name != method:
                result["methods"][name]["gain_of_chosen"] = paired_bootstrap(task, y, nested, r["nested"], n_boot)
    return result, nested, mode, thresholds


def run_blend(params, models: list[str], method: str, features: str, compare: list[str] | None = None,
              options: BlendConfig | None = None, try_rounding: bool | None = None) -> dict:
    """``stack blend``: score ``method`` and every ``compare`` method, write submission.csv, metrics/cv.json,
    models/blend/{blender.json, blender.safetensors, oof.parquet, blend.json}; returns what cv.json holds."""
    cfg = load_blend_config(params)
    get_blender(method)
    check_features(features)
    compare = [m for m in (compare if compare is not None else cfg.compare) if m != method]
    check_honest(method, features)
    options = options or options_from(cfg, params.source)
    try_rounding = cfg.round if try_rounding is None else try_rounding
    ctx = load_context(params)
    task = ctx.task
    train, test, metas = load_frames(ctx, models)
    y, fold = ctx.y, ctx.fold

    kinds = {m: meta.get("kind") for m, meta in metas.items()}
    # a compared method that reads any features is scored on predictions when `both` is asked for (one blender
    # must not see both); the chosen method was checked above
    runs = {m: evaluate(m, features if m == method or features != "both" else "preds", train, models, task, y, fold,
                        options, kinds) for m in dict.fromkeys([method, *compare])}
    chosen = runs[method]
    result, nested, mode, thresholds = summarize(task, y, fold, runs, method, train, try_rounding, cfg.bootstrap)
    result["n_folds"] = int(len(np.unique(fold)))
    intervals = None
    if options.interval:  # calibrated on the nested OOF predictions, the honest residuals
        D = difficulty(task, nested, [oof_of(train[m], task) for m in models], ctx.train[task.text])
        result["intervals"] = nested_coverage(task, y, nested, D, fold, options.interval)
        intervals = Intervals.fit(task, y, nested, D, fold)
        for t, use in zip(task.targets, intervals.use_sigma):
            result["intervals"]["per_target"][t]["normalized"] = use  # the saved blend's choice
    metric = task.metric
    fitted = FittedBlend(
        method=method, layout=chosen["layout"], estimator=chosen["estimator"], grid=mode, thresholds=thresholds,
        intervals=intervals,
        fingerprints={"data": ctx.data_fp, "folds": ctx.folds_fp, "models": {n: metas[n].get("config") for n in models}},
        cv={"nested": result["blend"][metric], "in_sample": result["blend"]["in_sample"][metric]}, version=__version__,
        task_record=task.record(),
    )
    # Timings vary run to run: they go to models/blend/blend.json, not to the metrics DVC compares.
    seconds = {m: round(r["seconds"], 2) for m, r in runs.items()}
    sub = predict_blend(fitted, test)
    sub = aligned({"submission": sub}, ctx.sample_ids[task.id], task.id, "test predictions")["submission"]
    oof = pd.DataFrame({task.id: ctx.ids.to_numpy(), FOLD: fold})
    for i, t in enumerate(task.targets):
        oof[f"true_{t}"], oof[f"pred_{t}"] = y[:, i], nested[:, i]
    for col in task.keep:  # the training data's own columns, for reports and audits by subgroup
        oof[col] = ctx.train[col].to_numpy()
    write_outputs(sub, result, fitted, oof, seconds)
    return result


def write_outputs(sub: pd.DataFrame, result: dict, fitted: FittedBlend | None = None, oof: pd.DataFrame | None = None,
                  seconds: dict | None = None) -> None:
    """submission.csv, metrics/cv.json and the saved blend, each written to a temp file and renamed."""
    outputs = [(paths.SUBMISSION, lambda p: sub.to_csv(p, index=False)),
               (paths.cv_metrics(), lambda p: p.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n"))]
    if fitted is not None:
        config = {"method": fitted.method, "layout": fitted.layout.__dict__, "fingerprints": fitted.fingerprints,
                  "grid": fitted.grid, "cv": fitted.cv, "estimator": repr(fitted.estimator), "task": fitted.task_record,
                  "seconds": seconds or {}}
        outputs.append((paths.blend_dir() / "blend.json", lambda p: p.write_text(json.dumps(config, indent=2, default=list) + "\n")))
    for path, write in outputs:
        cache.atomic_write(path, write)
    if fitted is not None:
        save_blend(fitted)
    if oof is not None:
        cache.write_table(oof, paths.blend_dir() / "oof.parquet", {"method": result["method"], "models": result["models"]})
