"""Stage-one members: the kinds a ``configs/models/<name>.yaml`` can be, and how every kind fits its head and
writes ``cache/<name>/``.

A model config's ``kind`` picks the runner: ``backbone`` (frozen transformer, stack.embed), ``tfidf`` (word + char
n-grams, stack.textfeatures.tfidf), ``features`` (handcrafted statistics, stack.textfeatures.stats) or ``grammar``
(error rates from an ONNX grammar-error tagger, stack.textfeatures.grammar). All of them
cross-fit a ridge head on the fixed folds and write the same cache schema, so ``stack embed <name>`` and DVC's
``embed@<name>`` cover them all.

    from stack.member import model_kind, get_runner
    get_runner(model_kind("tfidf"))("tfidf", params, ["max_features=50000"])
"""

from __future__ import annotations

import dataclasses
import importlib
import json

import numpy as np
import pandas as pd

from stack import cache, paths
from stack.config import read_yaml, sha256_json
from stack.errors import StackError
from stack.heads import save_heads
from stack.metrics import mcrmse
from stack.oof import cross_fit
from stack.schema import ID, PRED_COLS, TARGETS, emb_cols

KINDS = {
    "backbone": "stack.embed:run_backbone",
    "tfidf": "stack.textfeatures.tfidf:run_tfidf",
    "features": "stack.textfeatures.stats:run_features",
    "grammar": "stack.textfeatures.grammar:run_grammar",
}


def model_kind(name: str) -> str:
    """The ``kind`` key of ``configs/models/<name>.yaml`` (default ``backbone``); unknown models list the known ones."""
    path = paths.model_config(name)
    if not path.exists():
        known = sorted(p.stem for p in paths.CONFIGS.glob("*.yaml"))
        raise StackError(f"unknown model {name!r}: no {path} (known models: {', '.join(known) or 'none'})")
    kind = read_yaml(path).get("kind", "backbone")
    if kind not in KINDS:
        raise StackError(f"{path}: unknown kind {kind!r} (valid: {', '.join(KINDS)})")
    return kind


def get_runner(kind: str):
    """``runner(name, params, overrides) -> result dict`` for a kind."""
    if kind not in KINDS:
        raise StackError(f"unknown kind {kind!r} (valid: {', '.join(KINDS)})")
    module, _, fn = KINDS[kind].partition(":")
    return getattr(importlib.import_module(module), fn)


def chosen_alphas(models) -> dict[str, list[float]]:
    """Per target, the ridge alpha each fold's head chose (heads are pipelines ending in RidgeCV)."""
    per_fold = [np.broadcast_to(np.asarray(m[-1].alpha_, float), (len(TARGETS),)) for m in models]
    return {t: [float(a[i]) for a in per_fold] for i, t in enumerate(TARGETS)}


def fit_and_write(name: str, kind: str, cfg, ctx, make_head, X, X_test, emb=None, emb_test=None, extra=None) -> dict:
    """Cross-fit ``make_head`` on ``X`` ``(n, ...)``, write OOF/test predictions (+ ``emb`` ``(n, d)`` columns if
    given) to ``cache/<name>/`` with the fingerprint and the resolved config; -> CV, chosen alphas."""
    oof, test_pred, models = cross_fit(make_head, X, ctx.y, ctx.fold, X_test)
    score, per_target = mcrmse(ctx.y, oof)
    alphas = chosen_alphas(models)
    grid = getattr(cfg, "head_alphas", ())
    edge = sorted({a for fold in alphas.values() for a in fold if grid and a in (min(grid), max(grid))})

    def frame(ids, preds, vectors):
        parts = [pd.DataFrame({ID: ids.to_numpy()}), pd.DataFrame(preds, columns=list(PRED_COLS))]
        if vectors is not None:
            parts.append(pd.DataFrame(np.asarray(vectors, np.float32), columns=emb_cols(vectors.shape[1])))
        return pd.concat(parts, axis=1)

    cfg_json = dataclasses.asdict(cfg)
    meta = {
        "data": ctx.data_fp, "folds": ctx.folds_fp, "config": sha256_json(cfg_json), "model": name,
        "version": __import__("stack").__version__, "kind": kind, "config_json": cfg_json,
        "cv": {"mcrmse": score, "per_target": per_target}, "head": {"alphas_grid": list(grid), "chosen": alphas},
        **(extra or {}),
    }
    save_heads(name, models, meta)  # before the cache: a cache on disk always has the heads that made it
    cache.write_model(name, frame(ctx.train[ID], oof, emb), frame(ctx.test[ID], test_pred, emb_test), meta)
    cache.write_json(paths.model_cache(name) / "config.json", meta)
    return {"mcrmse": score, "per_target": per_target, "alphas": alphas, "alphas_at_edge": edge}
