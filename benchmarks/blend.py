"""Time every blend method as ``stack blend`` runs it (5 nested folds + 1 full fit) on 5 models in one run.

Synthetic by default: 3,911 essays (the real FB3 scores), 5 models with 600-dim embeddings (3,000 in all) and
noisy OOF predictions. ``--cache`` times the real caches of ``--models`` in the current project instead.

    nice -n 10 .venv/bin/python benchmarks/blend.py                      # all methods, synthetic
    .venv/bin/python benchmarks/blend.py --methods ridge,hill --rows 800  # quick look
    .venv/bin/python benchmarks/blend.py --cache --models minilm,mpnet    # real caches (run in the project root)
    .venv/bin/python benchmarks/blend.py --vs-sklearn                     # one ridge fit: ours vs RidgeCV, side by side
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import pandas as pd

from stack.blend.config import BlendConfig
from stack.blend.registry import BLENDERS
from stack.blend.run import evaluate
from stack.metrics import mcrmse
from stack.schema import emb_cols
from stack.task import Task

TASK = Task()  # FB3

ORDER = ("ridge", "hill", "nelder-mead", "stack", "svr", "lgbm")


def synthetic(rows: int, n_models: int, dim: int, seed: int = 0):
    """({model: frame with text_id, pred_*, emb_*}, y (rows, 6), fold (rows,)) with a learnable signal."""
    rng = np.random.default_rng(seed)
    y = TASK.y(pd.read_csv("data/fb3/train.csv"))
    y = y[rng.integers(0, len(y), rows)] if rows != len(y) else y
    latent = np.hstack([y - y.mean(0), rng.normal(0, 0.3, (rows, 26))])  # (rows, 32)
    frames = {}
    for i in range(n_models):
        emb = latent @ rng.normal(0, 1 / np.sqrt(32), (32, dim)) + rng.normal(0, 0.5 + 0.1 * i, (rows, dim))
        pred = y + rng.normal(0, 0.45 + 0.03 * i, y.shape) + rng.normal(0, 0.2, (rows, 1))
        frames[f"m{i}"] = pd.concat([pd.DataFrame({TASK.id: np.arange(rows).astype(str)}),
                                     pd.DataFrame(pred, columns=list(TASK.pred_cols)),
                                     pd.DataFrame(emb.astype(np.float32), columns=emb_cols(dim))], axis=1)
    return frames, y, np.arange(rows) % 5


def from_cache(models: list[str]):
    from stack.blend.run import load_frames
    from stack.config import load_params
    from stack.stages import load_context

    ctx = load_context(load_params())
    train, _, _ = load_frames(ctx, models)
    return train, ctx.y, ctx.fold


def vs_sklearn(X: np.ndarray, y: np.ndarray) -> None:
    """One full-data ridge fit, ours vs StandardScaler + RidgeCV(alpha_per_target), same data, same process."""
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from stack.heads.ridge import ALPHAS, Ridge

    t0 = time.perf_counter()
    ours = Ridge().fit(X, y)
    t1 = time.perf_counter()
    ref = make_pipeline(StandardScaler(), RidgeCV(alphas=np.array(ALPHAS), alpha_per_target=True)).fit(X, y)
    t2 = time.perf_counter()
    same = np.allclose(ours.predict(X[:200]), ref.predict(X[:200]), atol=1e-6)
    print(f"ridge on {X.shape}: ours {t1 - t0:.1f}s, sklearn RidgeCV {t2 - t1:.1f}s, ratio {(t2 - t1) / (t1 - t0):.1f}x; "
          f"same predictions: {same}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default=",".join(ORDER))
    ap.add_argument("--features", default="emb", help="features for ridge/svr/lgbm: emb | preds | both")
    ap.add_argument("--rows", type=int, default=3911)
    ap.add_argument("--n-models", type=int, default=5)
    ap.add_argument("--dim", type=int, default=600, help="embedding width of each synthetic model")
    ap.add_argument("--cache", action="store_true", help="use the project's caches of --models")
    ap.add_argument("--models", default="minilm")
    ap.add_argument("--vs-sklearn", action="store_true", help="time one ridge fit against sklearn RidgeCV and stop")
    args = ap.parse_args()
    if args.cache:
        models = args.models.split(",")
        frames, y, fold = from_cache(models)
    else:
        frames, y, fold = synthetic(args.rows, args.n_models, args.dim)
        models = list(frames)
    if args.vs_sklearn:
        from stack.blend.features import make_layout, matrix

        vs_sklearn(matrix(frames, make_layout(frames, models, "emb", TASK)), y)
        return
    n_emb = sum(len([c for c in f.columns if c.startswith("emb_")]) for f in frames.values())
    print(f"{len(y)} rows, {len(models)} models, {n_emb} embedding dims, {len(np.unique(fold))} folds, "
          f"{len(os.sched_getaffinity(0))} cores; seconds = {len(np.unique(fold))} nested fits + 1 full fit")
    best_single = min(mcrmse(y, f[list(TASK.pred_cols)].to_numpy())[0] for f in frames.values())
    print(f"{'method':<12} {'features':<8} {'seconds':>8} {'nested':>8} {'in-sample':>9}   best single {best_single:.4f}")
    for method in args.methods.split(","):
        if method not in BLENDERS:
            raise SystemExit(f"unknown method {method!r} (valid: {', '.join(BLENDERS)})")
        t0 = time.perf_counter()
        r = evaluate(method, args.features, frames, models, TASK, y, fold, BlendConfig())
        secs = time.perf_counter() - t0
        print(f"{method:<12} {r['layout'].features:<8} {secs:8.1f} {mcrmse(y, r['nested'])[0]:8.4f} "
              f"{mcrmse(y, r['in_sample'])[0]:9.4f}", flush=True)


if __name__ == "__main__":
    main()
