"""One fold of fine-tuning: token ids + targets in, the kept model + its validation outputs out.

Pure core: no files. Per epoch: length-bucketed batches, AMP autocast, gradient accumulation, clipping,
FGM/AWP on the same batch, EMA/SWA after each optimiser step, then validation MCRMSE (reported through
``log``). The model kept is the last epoch's (``keep: last``) or the best epoch's (``keep: best``).

    res = train_fold(model, cfg, train_ids, y_train, valid_ids, y_valid, pad_id, torch.device("cpu"))
    res.valid_pred, res.valid_feats, res.history            # (n_valid, 6), (n_valid, d), [per-epoch dicts]
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from stack.errors import StackError
from stack.metrics import mcrmse
from stack.train import dist
from stack.train.batching import collate, eval_batches, train_batches
from stack.train.optim import make_optimizer, make_scheduler, prepare_backbone
from stack.train.regularizers import make_adversaries, make_averager


def resolve_amp(amp: str, device: torch.device) -> str:
    """auto -> bf16 where the device supports it, else fp32; fp16 (with a grad scaler) is CUDA only."""
    if amp == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)()) else "fp32"
    if amp == "fp16" and device.type != "cuda":
        raise StackError("amp fp16 needs a CUDA device (its grad scaler is CUDA only); use amp bf16 or fp32 on CPU")
    return amp


def autocast(amp: str, device: torch.device):
    if amp == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def loss_fn(cfg):
    """``(pred (b, 6), y (b, 6)) -> scalar``: per-target loss averaged with ``target_weights``."""
    w = torch.tensor(cfg.target_weights, dtype=torch.float32)
    w = w / w.sum()

    def f(pred, y):
        if cfg.loss == "smooth_l1":
            per = F.smooth_l1_loss(pred, y, beta=cfg.smooth_l1_beta, reduction="none").mean(0)
        else:
            per = ((pred - y) ** 2).mean(0)
            if cfg.loss == "rmse":
                per = torch.sqrt(per + 1e-8)
        return (per * w.to(per.device)).sum()

    return f


def enable_checkpointing(backbone) -> None:
    """Recompute activations in backward; non-reentrant so frozen embeddings still pass gradients on."""
    if hasattr(backbone, "activation_checkpointing_enable"):  # transformers >= 5 name
        backbone.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


@torch.no_grad()
def predict(model, encoded: list[list[int]], batch_size: int, pad_id: int, device, amp: str = "fp32"):
    """Predictions ``(n, 6)`` and pooled features ``(n, d)`` (float32 numpy) in the order of ``encoded``."""
    was_training = model.training
    model.eval()
    preds, feats = [None] * len(encoded), [None] * len(encoded)
    for idx in eval_batches([len(x) for x in encoded], batch_size):
        ids, mask = collate(encoded, idx, pad_id)
        with autocast(amp, device):
            p, f = model(ids.to(device), mask.to(device))
        p, f = p.float().cpu().numpy(), f.float().cpu().numpy()
        for r, i in enumerate(idx):
            preds[i], feats[i] = p[r], f[r]
    model.train(was_training)
    return np.stack(preds).astype(np.float32), np.stack(feats).astype(np.float32)


@dataclass
class FoldResult:
    model: torch.nn.Module  # the kept weights (the averaged copy when EMA/SWA is on)
    valid_pred: np.ndarray  # (n_valid, 6) from the kept weights
    valid_feats: np.ndarray  # (n_valid, d)
    kept_epoch: int
    amp: str
    history: list[dict] = field(default_factory=list)


def train_fold(model, cfg, train_ids, y_train, valid_ids, y_valid, pad_id: int, device, log=None,
               desc: str = "train", seed: int | None = None) -> FoldResult:
    """Fine-tune ``model`` (a Regressor) on ``train_ids``/``y_train`` ``(n, 6)``; validate on the others each epoch."""
    seed = cfg.seed if seed is None else seed
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    amp = resolve_amp(cfg.amp, device)
    model.to(device)
    prepare_backbone(model, cfg)
    if cfg.grad_checkpointing:
        enable_checkpointing(model.backbone)
    optimizer = make_optimizer(model, cfg)
    lengths = [len(x) for x in train_ids]
    n_batches = len(dist.shard(train_batches(lengths, cfg.batch_size, cfg.bucket_batches, np.random.default_rng(0))))
    steps_per_epoch = math.ceil(n_batches / cfg.accum_steps)
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch * cfg.epochs)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == "fp16")
    averager = make_averager(model, optimizer, cfg)
    adversaries = make_adversaries(model, cfg)
    net = dist.wrap(model, device)
    criterion = loss_fn(cfg)
    y_train = torch.as_tensor(np.asarray(y_train), dtype=torch.float32)
    history, best, kept = [], None, None

    def batch_loss(ids, mask, y):
        with autocast(amp, device):
            pred, _ = net(ids, mask)
        return criterion(pred.float(), y) / cfg.accum_steps

    for epoch in range(1, cfg.epochs + 1):
        from tqdm.auto import tqdm

        t0 = time.perf_counter()
        model.train()
        batches = dist.shard(train_batches(lengths, cfg.batch_size, cfg.bucket_batches, rng))
        total, seen = 0.0, 0
        with tqdm(total=len(batches), desc=f"{desc} epoch {epoch}/{cfg.epochs}", unit="batch",
                  disable=not dist.is_main(), mininterval=5) as bar:
            for i, idx in enumerate(batches):
                ids, mask = (t.to(device) for t in collate(train_ids, idx, pad_id))
                y = y_train[idx].to(device)
                loss = batch_loss(ids, mask, y)
                scaler.scale(loss).backward()
                for adv in adversaries:
                    if adv.on(epoch):
                        adv.attack.attack()
                        scaler.scale(batch_loss(ids, mask, y)).backward()
                        adv.attack.restore()
                if (i + 1) % cfg.accum_steps == 0 or i == len(batches) - 1:
                    if cfg.max_grad_norm > 0:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                    if not (averager is not None and averager.step(model, epoch)):
                        scheduler.step()
                total += loss.item() * cfg.accum_steps * len(idx)
                seen += len(idx)
                bar.set_postfix(loss=f"{total / seen:.4f}", refresh=False)
                bar.update()
        train_seconds = time.perf_counter() - t0
        eval_model = averager.module if averager is not None and averager.active else model
        pred, feats = predict(eval_model, valid_ids, cfg.eval_batch_size, pad_id, device, amp)
        score, per_target = mcrmse(y_valid, pred)
        top_lr = max((g["lr"] for g in optimizer.param_groups if not g["name"].startswith("head")), default=0.0)
        record = {"epoch": epoch, "train_loss": dist.mean(total / max(seen, 1), device), "valid_mcrmse": score,
                  "valid_per_target": per_target, "lr": top_lr,
                  "train_seconds": train_seconds, "valid_seconds": time.perf_counter() - t0 - train_seconds}
        history.append(record)
        if log is not None:
            log(record)
        if cfg.keep == "last" or best is None or score < best:
            best = score
            state = ({k: v.detach().clone() for k, v in eval_model.state_dict().items()} if cfg.keep == "best" else None)
            kept = (epoch, state, pred, feats, eval_model)
    epoch, state, pred, feats, final = kept
    if state is not None:
        final.load_state_dict(state)
    return FoldResult(final, pred, feats, epoch, amp, history)
