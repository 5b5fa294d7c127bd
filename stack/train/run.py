"""``stack train NAME``: fine-tune on every fold, then write the cache schema ``stack embed`` writes.

Per fold k: train on the other folds, predict fold k (OOF) and the test essays, save
``models/<name>/fold<k>/{model.safetensors,config.json,outputs.safetensors}``. A fold whose outputs exist
with the same config/data/folds hash is skipped, so a killed run restarts at the first unfinished fold.
Once every fold is done: ``cache/<name>/{train,test}.parquet`` = OOF / fold-mean predictions and pooled
features, joined on text_id.

    stack train minilm-ft                          # configs/train/minilm-ft.yaml
    stack train minilm-ft --set epochs=1 --set folds=[0]
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from stack import cache, paths
from stack.config import sha256_json
from stack.errors import StackError
from stack.metrics import mcrmse
from stack.schema import ID, PRED_COLS, TEXT, emb_cols
from stack.stages import load_context
from stack.train import dist, store
from stack.train.config import load_train_config
from stack.train.model import backbone_config


def _source(mcfg) -> dict:
    """The parts of configs/models/<backbone>.yaml that decide which weights are fine-tuned."""
    return {"backbone": mcfg.backbone, "packaged": mcfg.packaged, "path": mcfg.path}


def fold_hash(cfg, mcfg, ctx, fold: int) -> str:
    return sha256_json({"train": cfg.fingerprint(), "source": _source(mcfg), "data": ctx.data_fp,
                        "folds": ctx.folds_fp, "fold": fold})


class _Live:
    """Per-epoch DVCLive metrics ``fold<k>/{train_loss,valid_mcrmse}`` (rank 0 only; a no-op when off)."""

    def __init__(self, name: str, enabled: bool):
        self.live = None
        if enabled and dist.is_main():
            from dvclive import Live

            self.live = Live(dir=str(store.live_dir(name)), resume=True, save_dvc_exp=False, dvcyaml=False)

    def start_fold(self, fold: int) -> None:
        if self.live is not None:  # a retrained fold replaces its old curves
            shutil.rmtree(Path(self.live.plots_dir) / "metrics" / f"fold{fold}", ignore_errors=True)

    def logger(self, fold: int):
        def log(record: dict) -> None:
            if dist.is_main():
                from tqdm.auto import tqdm

                tqdm.write(f"fold {fold} epoch {record['epoch']}: train loss {record['train_loss']:.4f}  valid MCRMSE "
                           f"{record['valid_mcrmse']:.4f}  ({record['train_seconds'] / 60:.1f} + {record['valid_seconds'] / 60:.1f} min)")
            if self.live is None:
                return
            self.live.step = record["epoch"]
            self.live.log_metric(f"fold{fold}/train_loss", record["train_loss"])
            self.live.log_metric(f"fold{fold}/valid_mcrmse", record["valid_mcrmse"])
            self.live.make_summary()
        return log

    def finish(self, summary: dict) -> None:
        if self.live is not None:
            self.live.summary.update(summary)
            self.live.make_summary()


def _train_one(name, cfg, mcfg, ctx, fold, h, encoded, live) -> dict:
    import torch

    from stack.train.loop import predict, train_fold
    from stack.train.model import build_model

    torch.manual_seed(cfg.seed + fold)
    tokenizer, model = build_model(cfg)
    if not encoded:
        from stack.train.batching import encode, prepare_texts

        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        encoded.update(pad=pad, train=encode(prepare_texts(ctx.train[TEXT], cfg.paragraph, cfg.paragraph_token), tokenizer, cfg.max_len),
                       test=encode(prepare_texts(ctx.test[TEXT], cfg.paragraph, cfg.paragraph_token), tokenizer, cfg.max_len))
    device = dist.device_for(cfg.device)
    valid = np.flatnonzero(ctx.fold == fold)
    train = np.flatnonzero(ctx.fold != fold)
    ids = encoded["train"]
    live.start_fold(fold)
    res = train_fold(model, cfg, [ids[i] for i in train], ctx.y[train], [ids[i] for i in valid], ctx.y[valid],
                     encoded["pad"], device, log=live.logger(fold), desc=f"{name} fold {fold}", seed=cfg.seed + fold)
    test_pred, test_feats = predict(res.model, encoded["test"], cfg.eval_batch_size, encoded["pad"], device, res.amp)
    if dist.is_main():
        outputs = {"valid_pred": res.valid_pred, "valid_feats": res.valid_feats, "test_pred": test_pred,
                   "test_feats": test_feats, "valid_ids": ctx.train[ID].iloc[valid].tolist(), "test_ids": ctx.test[ID].tolist()}
        config = {"train": dataclasses.asdict(cfg), "backbone": dataclasses.asdict(mcfg), "fold": fold,
                  "data": ctx.data_fp, "folds": ctx.folds_fp, "kept_epoch": res.kept_epoch, "amp": res.amp,
                  "history": res.history, "version": __import__("stack").__version__}
        store.save_fold(name, fold, res.model, outputs, config, h)
    dist.barrier()
    return {"mcrmse": res.history[res.kept_epoch - 1]["valid_mcrmse"], "history": res.history, "amp": res.amp}


def _assemble(name: str, ctx, outs: dict[int, dict]) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """OOF rows joined on text_id, test = mean over folds -> (train frame, test frame, oof ``(n, 6)``)."""
    pos = pd.Series(np.arange(len(ctx.train)), index=ctx.train[ID])
    dim = next(iter(outs.values()))["valid_feats"].shape[1]
    oof = np.full((len(ctx.train), len(PRED_COLS)), np.nan)
    feats = np.full((len(ctx.train), dim), np.nan, dtype=np.float32)
    test_pred = np.zeros((len(ctx.test), len(PRED_COLS)))
    test_feats = np.zeros((len(ctx.test), dim))
    test_pos = pd.Series(np.arange(len(ctx.test)), index=ctx.test[ID])
    for k, o in outs.items():
        rows = pos.reindex(o["valid_ids"]).to_numpy()
        trows = test_pos.reindex(o["test_ids"]).to_numpy()
        if np.isnan(rows.astype(float)).any() or np.isnan(trows.astype(float)).any() or len(set(o["test_ids"])) != len(ctx.test):
            raise StackError(f"{paths.fold_dir(name, k)}: outputs cover other essays than the data; delete that folder and retrain")
        oof[rows], feats[rows] = o["valid_pred"], o["valid_feats"]
        test_pred[trows] += o["test_pred"] / len(outs)
        test_feats[trows] += o["test_feats"] / len(outs)
    if np.isnan(oof).any():
        raise StackError("fold outputs leave some training essays without an OOF prediction; rerun `stack folds` and retrain")
    cols = emb_cols(dim)

    def frame(ids, preds, vectors):
        return pd.concat([pd.DataFrame({ID: ids}), pd.DataFrame(preds, columns=list(PRED_COLS)),
                          pd.DataFrame(vectors.astype(np.float32), columns=cols)], axis=1)

    return frame(ctx.train[ID].to_numpy(), oof, feats), frame(ctx.test[ID].to_numpy(), test_pred, test_feats), oof


def run_train(name: str, params, overrides: list[str] | None = None) -> dict:
    """Fine-tune ``configs/train/<name>.yaml`` on the folds it names (default all); write the cache when all are done.

    Returns {"folds": {k: {"mcrmse", "history", "skipped"}}, "done": [...], "pending": [...], "seconds",
    and once every fold is done "mcrmse", "per_target"}.
    """
    import torch

    cfg = load_train_config(name, overrides)
    mcfg = backbone_config(cfg)
    ctx = load_context(params)
    all_folds = sorted(int(k) for k in np.unique(ctx.fold))
    bad = [k for k in cfg.folds if k not in all_folds]
    if bad:
        raise StackError(f"configs/train/{name}.yaml: fold {bad[0]} does not exist (folds: {', '.join(map(str, all_folds))})")
    device = dist.device_for(cfg.device)
    dist.setup(device)
    torch.set_num_threads(dist.cpu_threads(cfg.threads))
    t0 = time.perf_counter()
    hashes = {k: fold_hash(cfg, mcfg, ctx, k) for k in all_folds}
    live, encoded, result = _Live(name, cfg.dvclive), {}, {"folds": {}}
    for k in cfg.folds or all_folds:
        done = store.load_outputs(name, k, hashes[k])
        if done is not None:
            score, _ = mcrmse(ctx.y[ctx.fold == k], _rows(ctx, done, k))
            result["folds"][k] = {"mcrmse": score, "skipped": True}
            continue
        result["folds"][k] = {**_train_one(name, cfg, mcfg, ctx, k, hashes[k], encoded, live), "skipped": False}
    result["seconds"] = time.perf_counter() - t0
    outs = {k: store.load_outputs(name, k, hashes[k]) for k in all_folds}
    result["done"] = [k for k, o in outs.items() if o is not None]
    result["pending"] = [k for k, o in outs.items() if o is None]
    if result["pending"]:
        return result
    train_df, test_df, oof = _assemble(name, ctx, outs)
    score, per_target = mcrmse(ctx.y, oof)
    if not dist.is_main():
        return {**result, "mcrmse": score, "per_target": per_target}
    meta = {"data": ctx.data_fp, "folds": ctx.folds_fp, "config": sha256_json({"train": cfg.fingerprint(), "source": _source(mcfg)}),
            "model": name, "version": __import__("stack").__version__, "kind": "train",
            "config_json": {"train": dataclasses.asdict(cfg), "backbone": dataclasses.asdict(mcfg)},
            "cv": {"mcrmse": score, "per_target": per_target}}
    cache.write_model(name, train_df, test_df, meta)
    cache.write_json(paths.model_cache(name) / "config.json", meta)
    live.finish({"cv": {"mcrmse": score, **per_target}})
    return {**result, "mcrmse": score, "per_target": per_target}


def _rows(ctx, out: dict, fold: int) -> np.ndarray:
    """A finished fold's validation predictions ``(n_k, 6)`` in the order of that fold's ``ctx.train`` rows."""
    by_id = pd.DataFrame(out["valid_pred"], index=out["valid_ids"])
    return by_id.reindex(ctx.train[ID][ctx.fold == fold].to_numpy()).to_numpy()
