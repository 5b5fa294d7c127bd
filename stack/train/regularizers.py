"""Weight averaging (EMA, SWA) and adversarial training (FGM, AWP) for the fine-tuning loop.

Averagers keep a copy of the model (``torch.optim.swa_utils.AveragedModel``) that is updated after every
optimiser step and used for validation and prediction. Adversaries perturb weights using the current
gradients, after which the loop runs one more forward/backward on the same batch, then ``restore()``.

    avg = make_averager(model, optimizer, cfg)       # None when EMA and SWA are off
    adv = Adversary(FGM(model, eps=1.0), start_epoch=1)
"""

from __future__ import annotations

import torch
from torch.optim.swa_utils import SWALR, AveragedModel, get_ema_multi_avg_fn

from stack.errors import StackError


class EMA:
    """Exponential moving average of the weights, ``w_ema = decay * w_ema + (1 - decay) * w``, every step."""

    def __init__(self, model, decay: float):
        self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))
        self.active = True

    def step(self, model, epoch: int) -> bool:
        """Update from ``model``; returns True when the averager also stepped the lr (never for EMA)."""
        self.averaged.update_parameters(model)
        return False

    @property
    def module(self):
        return self.averaged.module


class SWA:
    """Equal-weight average of the weights from ``start_epoch`` on; SWALR then replaces the lr schedule
    (the top encoder layer anneals to ``swa_lr``, other groups keep their ratio to it)."""

    def __init__(self, model, optimizer, start_epoch: int, swa_lr: float, anneal_steps: int, strategy: str):
        self.averaged = AveragedModel(model)
        # keep the LLRD / head-lr ratios: each group anneals to swa_lr scaled like its own starting lr
        start = [g.get("initial_lr", g["lr"]) for g in optimizer.param_groups]
        top = max((lr for lr, g in zip(start, optimizer.param_groups) if not str(g.get("name", "")).startswith("head")), default=None)
        lrs = [swa_lr * lr / top for lr in start] if top else swa_lr
        self.scheduler = SWALR(optimizer, swa_lr=lrs, anneal_epochs=max(anneal_steps, 1), anneal_strategy=strategy)
        self.start_epoch = start_epoch
        self.active = False

    def step(self, model, epoch: int) -> bool:
        if epoch < self.start_epoch:
            return False
        self.active = True
        self.averaged.update_parameters(model)
        self.scheduler.step()
        return True

    @property
    def module(self):
        return self.averaged.module


def make_averager(model, optimizer, cfg):
    if cfg.ema_decay > 0:
        return EMA(model, cfg.ema_decay)
    if cfg.swa:
        return SWA(model, optimizer, cfg.swa_start_epoch, cfg.swa_lr, cfg.swa_anneal_steps, cfg.swa_anneal_strategy)
    return None


class FGM:
    """Fast gradient method: move the word embeddings by ``eps * g / ||g||``."""

    def __init__(self, model, eps: float):
        self.weight = model.backbone.get_input_embeddings().weight
        if not self.weight.requires_grad:
            raise StackError("fgm_eps > 0 perturbs the word embeddings: set freeze_embeddings false or fgm_eps 0")
        self.eps, self.backup = eps, None

    def attack(self) -> None:
        g = self.weight.grad
        if g is None:
            return
        norm = torch.linalg.vector_norm(g)
        if torch.isfinite(norm) and norm > 0:
            self.backup = self.weight.data.clone()
            self.weight.data.add_(g, alpha=self.eps / norm.item())

    def restore(self) -> None:
        if self.backup is not None:
            self.weight.data.copy_(self.backup)
            self.backup = None


class AWP:
    """Adversarial weight perturbation: every trainable ``weight`` moves by ``lr * g / ||g|| * ||w||``,
    clipped to ``w +- eps * |w|`` (the form used by the top FB3 solutions)."""

    def __init__(self, model, eps: float, lr: float):
        self.params = [(n, p) for n, p in model.named_parameters() if p.requires_grad and "weight" in n]
        self.eps, self.lr, self.backup = eps, lr, {}

    def attack(self) -> None:
        for name, p in self.params:
            if p.grad is None:
                continue
            g_norm, w_norm = torch.linalg.vector_norm(p.grad), torch.linalg.vector_norm(p.data)
            if not (torch.isfinite(g_norm) and g_norm > 0):
                continue
            self.backup[name] = p.data.clone()
            bound = self.eps * p.data.abs()
            step = self.lr * p.grad / (g_norm + 1e-6) * (w_norm + 1e-6)
            p.data.add_(step)
            p.data.copy_(torch.minimum(torch.maximum(p.data, self.backup[name] - bound), self.backup[name] + bound))

    def restore(self) -> None:
        for name, p in self.params:
            if name in self.backup:
                p.data.copy_(self.backup[name])
        self.backup = {}


class Adversary:
    """An attack (FGM or AWP) that is switched on from ``start_epoch``."""

    def __init__(self, attack, start_epoch: int):
        self.attack, self.start_epoch = attack, start_epoch

    def on(self, epoch: int) -> bool:
        return epoch >= self.start_epoch


def make_adversaries(model, cfg) -> list[Adversary]:
    out = []
    if cfg.fgm_eps > 0:
        out.append(Adversary(FGM(model, cfg.fgm_eps), cfg.fgm_start_epoch))
    if cfg.awp_eps > 0:
        out.append(Adversary(AWP(model, cfg.awp_eps, cfg.awp_lr), cfg.awp_start_epoch))
    return out
