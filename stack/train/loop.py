"""One fold of fine-tuning: token ids + targets in, the kept model + its validation outputs out.

Pure core: no files. Per epoch: length-bucketed batches, autocast in stack.runtime's precision (fp16 with a
grad scaler), gradient accumulation, clipping,
FGM/AWP on the same batch, EMA/SWA after each optimiser step, then validation MCRMSE (reported through
``log``). The model kept is the last epoch's (``keep: last``) or the best epoch's (``keep: best``).

    res = train_fold(model, cfg, train_ids, y_train, valid_ids, y_valid, pad_id, torch.device("cpu"))
    res.valid_pred, res.valid_feats, res.history            # (n_valid, k), (n_valid, d), [per-epoch dicts]
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from stack import runtime
from stack.metrics import mcrmse
from stack.train import dist
from stack.train.batching import collate, eval_batches, train_batches
from stack.train.optim import make_optimizer, make_scheduler, prepare_backbone
from stack.train.regularizers import make_adversaries, make_averager


def loss_fn(cfg):
    """``(pred (b, k), y (b, k)) -> scalar``: per-target loss averaged with ``target_weights`` (equal if empty)."""

    def f(pred, y):
        w = torch.tensor(cfg.target_weights or [1.0] * pred.shape[1], dtype=torch.float32)
        w = w / w.sum()
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
def predict(model, encoded: list[list[int]], batch_size: int, pad_id: int, device, precision: str = "fp32"):
    """Predictions ``(n, k)`` and pooled features ``(n, d)`` (float32 numpy) in the order of ``encoded``."""
    was_training = model.training
    model.eval()
    preds, feats = [None] * len(encoded), [None] * len(encoded)
    for idx in eval_batches([len(x) for x in encoded], batch_size):
        ids, mask = collate(encoded, idx, pad_id)
        with runtime.autocast(precision, device):
            p, f = model(ids.to(device), mask.to(device))
        p, f = p.float().cpu().numpy(), f.float().cpu().numpy()
        for r, i in enumerate(idx):
            preds[i], feats[i] = p[r], f[r]
    model.train(was_training)
    return np.stack(preds).astype(np.float32), np.stack(feats).astype(np.float32)


@dataclass
class FoldResult:
    model: torch.nn.Module  # the kept weights (the averaged copy when EMA/SWA is on)
    valid_pred: np.ndarray  # (n_valid, k) from the kept weights
    valid_feats: np.ndarray  # (n_valid, d)
    kept_epoch: int
    precision: str
    history: list[dict] = field(default_factory=list)


@dataclass
class _Steps:
    """The optimiser side of one fold, built once: forward/backward with autocast, adversarial passes, gradient
    accumulation and clipping, the (scaled) optimiser step, then EMA/SWA or the lr schedule."""

    cfg: object
    model: torch.nn.Module
    net: torch.nn.Module  # the model, DDP-wrapped when distributed
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler
    averager: object
    adversaries: list
    criterion: object
    precision: str
    device: torch.device

    def loss(self, ids, mask, y):
        with runtime.autocast(self.precision, self.device):
            pred, _ = self.net(ids, mask)
        return self.criterion(pred.float(), y) / self.cfg.accum_steps

    def epoch(self, batches, train_ids, y_train, pad_id: int, epoch: int, desc: str) -> float:
        """One pass over ``batches`` (row indices) -> the mean training loss."""
        from tqdm.auto import tqdm

        cfg, total, seen = self.cfg, 0.0, 0
        self.model.train()
        with tqdm(total=len(batches), desc=f"{desc} epoch {epoch}/{cfg.epochs}", unit="batch",
                  disable=not dist.is_main(), mininterval=5) as bar:
            for i, idx in enumerate(batches):
                ids, mask = (t.to(self.device) for t in collate(train_ids, idx, pad_id))
                y = y_train[idx].to(self.device)
                loss = self.loss(ids, mask, y)
                self.scaler.scale(loss).backward()
                for adv in self.adversaries:
                    if adv.on(epoch):
                        adv.attack.attack()
                        self.scaler.scale(self.loss(ids, mask, y)).backward()
                        adv.attack.restore()
                if (i + 1) % cfg.accum_steps == 0 or i == len(batches) - 1:
                    self.step(epoch)
                total += loss.item() * cfg.accum_steps * len(idx)
                seen += len(idx)
                bar.set_postfix(loss=f"{total / seen:.4f}", refresh=False)
                bar.update()
        return total / max(seen, 1)

    def step(self, epoch: int) -> None:
        if self.cfg.max_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if not (self.averager is not None and self.averager.step(self.model, epoch)):
            self.scheduler.step()


def _steps(model, cfg, lengths, device) -> _Steps:
    precision = runtime.precision(cfg.precision, device, cfg.name)
    model.to(device)
    prepare_backbone(model, cfg)
    if cfg.grad_checkpointing:
        enable_checkpointing(model.backbone)
    optimizer = make_optimizer(model, cfg)
    n_batches = len(dist.this_rank(train_batches(lengths, cfg.batch_size, cfg.bucket_batches, np.random.default_rng(0))))
    scheduler = make_scheduler(optimizer, cfg, math.ceil(n_batches / cfg.accum_steps) * cfg.epochs)
    return _Steps(cfg, model, dist.wrap(model, device), optimizer, scheduler,
                  torch.amp.GradScaler("cuda", enabled=precision == "fp16"), make_averager(model, optimizer, cfg),
                  make_adversaries(model, cfg), loss_fn(cfg), precision, device)


def train_fold(model, cfg, train_ids, y_train, valid_ids, y_valid, pad_id: int, device, log=None,
               desc: str = "train", seed: int | None = None, targets: tuple[str, ...] | None = None) -> FoldResult:
    """Fine-tune ``model`` (a Regressor) on ``train_ids``/``y_train`` ``(n, k)``; validate on the others each epoch
    by MCRMSE (the regression objective; ``targets`` names the columns, default FB3's)."""
    seed = cfg.seed if seed is None else seed
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    lengths = [len(x) for x in train_ids]
    steps = _steps(model, cfg, lengths, device)
    y_train = torch.as_tensor(np.asarray(y_train), dtype=torch.float32)
    history, best, kept = [], None, None
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        batches = dist.this_rank(train_batches(lengths, cfg.batch_size, cfg.bucket_batches, rng))
        train_loss = steps.epoch(batches, train_ids, y_train, pad_id, epoch, desc)
        train_seconds = time.perf_counter() - t0
        averager = steps.averager
        eval_model = averager.module if averager is not None and averager.active else model
        pred, feats = predict(eval_model, valid_ids, cfg.eval_batch_size, pad_id, device, steps.precision)
        score, per_target = mcrmse(y_valid, pred, targets)
        top_lr = max((g["lr"] for g in steps.optimizer.param_groups if not g["name"].startswith("head")), default=0.0)
        record = {"epoch": epoch, "train_loss": dist.mean(train_loss, device), "valid_mcrmse": score,
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
    return FoldResult(final, pred, feats, epoch, steps.precision, history)
