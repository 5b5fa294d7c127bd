"""``kind: finetune``: a transformer fine-tuned on every fold (stack.train), the FB3 top teams' recipe.

Per fold k: train on the other folds, predict fold k (OOF) and the test essays, save
``models/<name>/fold<k>/{model.safetensors,config.json,outputs.safetensors}`` (and, once, the tokenizer and the
backbone's architecture in ``models/<name>/backbone/``, so scoring needs no hub). A fold whose outputs exist with
the same fingerprint is skipped, so a killed run restarts at the first unfinished fold; the cache is written once
every fold is done: OOF / fold-mean predictions and pooled features.

    stack fit base                                  # configs/members/base.yaml: DeBERTa-v3-base
    stack fit minilm-ft --set epochs=1 --set folds=[0]
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from stack import __version__, runtime
from stack.config import sha256_json
from stack.errors import StackError
from stack.members.registry import Fitted, Kind, check_transformer, register
from stack.metrics import mcrmse
from stack.train.config import TrainConfig, check_targets, validate

ARCHITECTURE = "backbone"  # tokenizer + backbone config.json, no weights


def fold_hash(spec, ctx, fold: int) -> str:
    return sha256_json({"member": spec.fingerprint(), "data": ctx.data_fp, "folds": ctx.folds_fp, "fold": fold,
                        **ctx.task.fingerprint_meta()})


def _encode(cfg, tokenizer, texts) -> list[list[int]]:
    from stack.train.batching import encode, prepare_texts

    return encode(prepare_texts(texts, cfg.paragraph, cfg.paragraph_token), tokenizer, cfg.max_len)


def _train_one(spec, ctx, fold: int, h: str, encoded: dict, live, folder, device) -> dict:
    import torch

    from stack.train import dist, store
    from stack.train.loop import predict, train_fold
    from stack.train.model import build_model, save_architecture

    cfg, task = spec.cfg, ctx.task
    torch.manual_seed(cfg.seed + fold)
    tokenizer, model = build_model(cfg, spec.backbone, spec.where, task)
    if not encoded:
        encoded.update(pad=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
                       train=_encode(cfg, tokenizer, ctx.train[task.text]),
                       test=_encode(cfg, tokenizer, ctx.test[task.text]))
        if dist.is_main():
            save_architecture(tokenizer, model, folder / ARCHITECTURE)
    valid, train = np.flatnonzero(ctx.fold == fold), np.flatnonzero(ctx.fold != fold)
    ids = encoded["train"]
    live.start_fold(fold)
    res = train_fold(model, cfg, [ids[i] for i in train], ctx.y[train], [ids[i] for i in valid], ctx.y[valid],
                     encoded["pad"], device, log=live.logger(fold), desc=f"{spec.name} fold {fold}", seed=cfg.seed + fold,
                     targets=task.targets)
    test_pred, test_feats = predict(res.model, encoded["test"], cfg.eval_batch_size, encoded["pad"], device, res.precision)
    if dist.is_main():
        outputs = {"valid_pred": res.valid_pred, "valid_feats": res.valid_feats, "test_pred": test_pred,
                   "test_feats": test_feats, "valid_ids": ctx.ids.iloc[valid].tolist(),
                   "test_ids": ctx.test[task.id].tolist()}
        config = {**spec.config_json(), "fold": fold, "data": ctx.data_fp, "folds": ctx.folds_fp,
                  "kept_epoch": res.kept_epoch, "precision": res.precision, "history": res.history,
                  "version": __version__}
        store.save_fold(folder, fold, res.model, outputs, config, h)
    dist.barrier()
    return {"mcrmse": res.history[res.kept_epoch - 1]["valid_mcrmse"], "precision": res.precision}


def _assemble(ctx, outs: dict[int, dict], folder):
    """OOF rows joined on the ids, test = mean over folds -> (oof (n, k), test (m, k), feats (n, d), test feats)."""
    task = ctx.task
    pos, test_pos = pd.Series(np.arange(len(ctx.train)), index=ctx.ids), pd.Series(np.arange(len(ctx.test)), index=ctx.test[task.id])
    dim = next(iter(outs.values()))["valid_feats"].shape[1]
    oof, feats = np.full((len(ctx.train), task.k), np.nan), np.full((len(ctx.train), dim), np.nan, np.float32)
    test_pred, test_feats = np.zeros((len(ctx.test), task.k)), np.zeros((len(ctx.test), dim))
    for k, o in outs.items():
        rows, trows = pos.reindex(o["valid_ids"]).to_numpy(), test_pos.reindex(o["test_ids"]).to_numpy()
        if (np.isnan(rows.astype(float)).any() or np.isnan(trows.astype(float)).any() or len(set(o["test_ids"])) != len(ctx.test)
                or o["valid_pred"].shape[1] != task.k):
            raise StackError(f"{folder / f'fold{k}'}: outputs cover other essays than the data; delete that folder and refit")
        oof[rows], feats[rows] = o["valid_pred"], o["valid_feats"]
        test_pred[trows] += o["test_pred"] / len(outs)
        test_feats[trows] += o["test_feats"] / len(outs)
    if np.isnan(oof).any():
        raise StackError("fold outputs leave some training essays without an OOF prediction; rerun `stack folds` and refit")
    return oof, test_pred, feats, test_feats.astype(np.float32)


@register
class Finetune(Kind):
    name = "finetune"
    config = TrainConfig
    uses_backbone = True
    distributed = True

    def check(self, spec) -> None:
        validate(spec.cfg, spec.where)
        check_transformer(spec)

    def fit(self, spec, ctx, folder) -> Fitted:
        from stack.train import dist, store
        from stack.train.live import Live

        cfg, all_folds = spec.cfg, sorted(int(k) for k in np.unique(ctx.fold))
        check_targets(cfg, ctx.task, spec.where)
        bad = [k for k in cfg.folds if k not in all_folds]
        if bad:
            raise StackError(f"{spec.where}: fold {bad[0]} does not exist (folds: {', '.join(map(str, all_folds))})")
        device = runtime.device(cfg.device, spec.where)
        dist.setup(device)
        runtime.set_threads(cfg.threads)
        hashes = {k: fold_hash(spec, ctx, k) for k in all_folds}
        live, encoded, folds, outs = Live(spec.name, cfg.dvclive), {}, {}, {}
        for k in cfg.folds or all_folds:
            done = store.load_outputs(folder, k, hashes[k])
            if done is not None:
                by_id = pd.DataFrame(done["valid_pred"], index=done["valid_ids"])
                score, _ = mcrmse(ctx.y[ctx.fold == k], by_id.reindex(ctx.ids[ctx.fold == k]).to_numpy(), ctx.task.targets)
                folds[k], outs[k] = {"mcrmse": score, "skipped": True}, done
                continue
            folds[k] = {**_train_one(spec, ctx, k, hashes[k], encoded, live, folder, device), "skipped": False}
        outs.update({k: store.load_outputs(folder, k, hashes[k]) for k in all_folds if k not in outs})
        pending = [k for k, o in outs.items() if o is None]
        info = {"folds": folds, "essays": len(ctx.train) + len(ctx.test)}
        if pending:
            return Fitted(None, None, info=info, pending=pending)
        if not (folder / ARCHITECTURE).is_dir() and dist.is_main():  # every fold skipped, the architecture deleted
            from stack.train.model import build_model, save_architecture

            save_architecture(*build_model(cfg, spec.backbone, spec.where, ctx.task), folder / ARCHITECTURE)
        oof, test, feats, test_feats = _assemble(ctx, outs, folder)
        score, per_target = mcrmse(ctx.y, oof, ctx.task.targets)
        live.finish({"cv": {"mcrmse": score, **per_target}})
        return Fitted(oof, test, feats, test_feats, {"trained_folds": all_folds}, info)

    def scorer(self, spec, folder, meta: dict, strict: bool = False):
        cfg, folds = spec.cfg, _saved_folds(meta, folder, spec.name)

        def score(texts, upstream=None):
            from stack.train.loop import predict
            from stack.train.model import model_from_folder
            from stack.train.store import load_weights, n_outputs

            device = runtime.device(cfg.device, spec.where)  # auto, and fp16 only on CUDA: runtime.for_scoring
            prec = runtime.precision(cfg.precision, device, spec.where)
            hint = f"run `stack fit {spec.name}`"
            k = n_outputs(folder, folds[0], hint)
            tokenizer, model = model_from_folder(cfg, folder / ARCHITECTURE, spec.where, k)  # one architecture ...
            model.to(device)
            encoded = _encode(cfg, tokenizer, texts)
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
            preds, feats = [], []
            for fold in folds:  # ... whose every saved tensor each fold's weights replace (a strict load)
                load_weights(model, folder, fold, hint)
                p, f = predict(model, encoded, cfg.eval_batch_size, pad, device, prec)
                preds.append(p)
                feats.append(f)
            # the fold mean in float64, as the cache's test predictions were averaged
            return np.mean(np.asarray(preds, np.float64), axis=0), np.mean(np.asarray(feats, np.float64), axis=0)

        return score

    def export(self, spec, meta: dict, src, dst, keep_folds: bool, by_reference: bool) -> dict:
        """The architecture (tokenizer + config.json) and every fold's weights (+ outputs and configs with
        ``keep_folds``)."""
        _export(spec, meta, src, dst, keep_folds)
        return {"path": ARCHITECTURE, "packaged": None}  # the tokenizer and architecture travel; weights per fold


def _saved_folds(meta: dict, folder, name: str) -> list[int]:
    folds = meta.get("trained_folds")
    if not folds:
        raise StackError(f"{folder}: no fold list in member.json; run `stack fit {name}`")
    return [int(k) for k in folds]


def _export(spec, meta: dict, src, dst, keep_folds: bool) -> None:
    import shutil

    from stack.train.store import CONFIG, OUTPUTS, WEIGHTS

    arch = src / ARCHITECTURE
    if not (arch / "config.json").is_file():
        raise StackError(f"{arch}: no saved architecture; run `stack fit {spec.name}` again")
    shutil.copytree(arch, dst / ARCHITECTURE, dirs_exist_ok=True)
    for k in _saved_folds(meta, src, spec.name):
        names = (WEIGHTS, OUTPUTS, CONFIG) if keep_folds else (WEIGHTS,)
        (dst / f"fold{k}").mkdir(parents=True, exist_ok=True)
        for name in names:
            if not (src / f"fold{k}" / name).is_file():
                raise StackError(f"{src / f'fold{k}' / name}: missing; run `stack fit {spec.name}` again")
            shutil.copy2(src / f"fold{k}" / name, dst / f"fold{k}" / name)
