"""Optimiser side of fine-tuning: LLRD parameter groups, AdamW, warm-up schedules, re-init and freezing.

Layer-wise lr decay: the top encoder layer trains at ``lr``, the one below at ``lr * llrd``, ...,
the embeddings at ``lr * llrd ** n_layers``; pooling + head at ``head_lr``. Biases and LayerNorm
weights never get weight decay.

    prepare_backbone(model, cfg)                       # re-init top / freeze bottom layers
    opt = make_optimizer(model, cfg)
    sched = make_scheduler(opt, cfg, n_steps)
"""

from __future__ import annotations

import torch
from torch import nn

from stack.backbones.depth import encoder_layers
from stack.errors import StackError
from stack.train.model import embeddings_module


def _no_decay(name: str, param: torch.Tensor) -> bool:
    lname = name.lower()
    return param.ndim < 2 or lname.endswith(".bias") or "layernorm" in lname or "layer_norm" in lname or ".norm" in lname


def param_groups(model, cfg) -> list[dict]:
    """AdamW groups ``[{params, lr, weight_decay, name}]``; frozen parameters are left out."""
    layers = encoder_layers(model.backbone)
    n = len(layers)
    depth = {}  # id(param) -> layers below the top (0 = top layer); embeddings are n deep
    for i, layer in enumerate(layers):
        for p in layer.parameters():
            depth[id(p)] = n - 1 - i
    emb = getattr(model.backbone, "embeddings", None)
    for p in emb.parameters() if emb is not None else []:
        depth[id(p)] = n
    head = {id(p) for p in model.head_params()}
    groups: dict[tuple, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in head:
            key, lr = ("head",), cfg.head_lr
        else:
            d = depth.get(id(p), 0)  # shared encoder parts (DeBERTa rel_embeddings, final norm) train with the top
            key, lr = (f"depth{d}",), cfg.lr * cfg.llrd**d
        decay = 0.0 if _no_decay(name, p) else cfg.weight_decay
        g = groups.setdefault(key + (decay,), {"params": [], "lr": lr, "weight_decay": decay,
                                                "name": f"{key[0]}{'' if decay else '/no_decay'}"})
        g["params"].append(p)
    return list(groups.values())


def make_optimizer(model, cfg) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, eps=cfg.adam_eps, betas=tuple(cfg.adam_betas))


def make_scheduler(optimizer, cfg, n_steps: int):
    """Warm-up over ``cfg.warmup * n_steps`` optimiser steps, then cosine / linear decay or constant."""
    from transformers import (
        get_constant_schedule_with_warmup,
        get_cosine_schedule_with_warmup,
        get_linear_schedule_with_warmup,
    )

    warm = int(round(cfg.warmup * n_steps))
    if cfg.scheduler == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, warm, n_steps)
    if cfg.scheduler == "linear":
        return get_linear_schedule_with_warmup(optimizer, warm, n_steps)
    return get_constant_schedule_with_warmup(optimizer, warm)


def _reinit(module: nn.Module, std: float) -> None:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=std)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def prepare_backbone(model, cfg) -> None:
    """Re-initialise the top ``reinit_layers`` layers; freeze embeddings and the bottom ``freeze_layers``."""
    layers = encoder_layers(model.backbone)
    n = len(layers)
    if cfg.reinit_layers + cfg.freeze_layers > n:
        raise StackError(f"configs/members/{cfg.name}.yaml: reinit_layers {cfg.reinit_layers} + freeze_layers "
                         f"{cfg.freeze_layers} exceed the backbone's {n} layers")
    std = getattr(model.backbone.config, "initializer_range", 0.02)
    for layer in list(layers)[n - cfg.reinit_layers :] if cfg.reinit_layers else []:
        _reinit(layer, std)
    frozen = list(layers)[: cfg.freeze_layers]
    if cfg.freeze_embeddings:
        frozen.append(embeddings_module(model.backbone))
    for module in frozen:
        for p in module.parameters():
            p.requires_grad_(False)
