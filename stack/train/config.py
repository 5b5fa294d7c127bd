"""The fine-tuning config (a ``kind: finetune`` member's keys): one frozen dataclass, every switch with its default
(see docs/train.md). Read through the member registry: ``configs/members/<name>.yaml`` + ``--set key=value``.

    from stack.members.registry import load_member
    spec = load_member("base", ["epochs=1", "folds=[0]"])     # spec.cfg: TrainConfig
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from stack.errors import StackError

CHOICES = {
    "paragraph": ("keep", "strip", "token"),
    "scheduler": ("cosine", "linear", "constant"),
    "loss": ("smooth_l1", "mse", "rmse"),
    "keep": ("last", "best"),
    "precision": ("auto", "bf16", "fp16", "fp32"),
    "swa_anneal_strategy": ("cos", "linear"),
}


@dataclass(frozen=True)
class TrainConfig:
    """Fine-tuning of one backbone on every fold. Epochs count from 1 in the ``*_start_epoch`` keys."""

    name: str = ""
    kind: str = "finetune"
    backbone: str = ""  # a name under configs/backbones/ (or inline keys: {path: DIR})
    # text and batches
    max_len: int = 512  # tokens per essay incl. specials; longer essays are truncated
    paragraph: str = "keep"  # keep | strip (newlines -> space) | token (paragraph breaks -> paragraph_token)
    paragraph_token: str = "[BR]"
    batch_size: int = 8
    eval_batch_size: int = 32
    bucket_batches: int = 32  # length-bucketed batches: sort within groups of this many batches; 0 = random
    # model
    pooling: tuple[str, ...] = ("mean",)  # token poolings side by side (stack.backbones.pooling), e.g. attention
    layers: tuple[int, ...] = (-1,)  # hidden states pooled: 0 = embeddings, -1 = last; [] = all
    layer_mode: str = "concat"  # concat | mean | weighted (softmax weights learned, from layer_weights)
    layer_weights: tuple[float, ...] = ()
    backbone_dropout: float = 0.0  # p of every dropout inside the backbone (top FB3 teams: 0)
    head_dropout: float = 0.0
    msd_samples: int = 1  # multi-sample dropout: >1 averages the head over this many dropout masks
    reinit_layers: int = 0  # re-initialise the top N encoder layers
    freeze_embeddings: bool = False
    freeze_layers: int = 0  # freeze the bottom N encoder layers
    grad_checkpointing: bool = False
    # optimiser and schedule
    epochs: int = 4
    lr: float = 2e-5  # top encoder layer; lower layers get lr * llrd ** depth-from-top
    llrd: float = 1.0  # layer-wise lr decay per layer (1 = off)
    head_lr: float = 1e-3  # pooling + regression head
    weight_decay: float = 0.01  # never on biases and LayerNorm weights
    adam_eps: float = 1e-6
    adam_betas: tuple[float, ...] = (0.9, 0.999)
    scheduler: str = "cosine"  # cosine | linear | constant, all with warm-up
    warmup: float = 0.0  # fraction of optimiser steps
    accum_steps: int = 1
    max_grad_norm: float = 1.0  # 0 = no clipping
    precision: str = "auto"  # autocast: auto (bf16 where native, fp16 on other GPUs, else fp32) | bf16 | fp16 | fp32
    # loss
    loss: str = "smooth_l1"  # smooth_l1 | mse | rmse (per-target RMSE, i.e. MCRMSE)
    smooth_l1_beta: float = 1.0
    target_weights: tuple[float, ...] = ()  # one per target of the task, in its order; () = equal weights
    # weight averaging and adversarial training
    keep: str = "last"  # last | best (lowest validation MCRMSE over epochs)
    ema_decay: float = 0.0  # 0 = off, e.g. 0.999
    swa: bool = False
    swa_start_epoch: int = 2
    swa_lr: float = 1e-5
    swa_anneal_steps: int = 10  # SWALR steps once per optimiser step
    swa_anneal_strategy: str = "cos"
    fgm_eps: float = 0.0  # 0 = off; perturbs the word embeddings
    fgm_start_epoch: int = 1
    awp_eps: float = 0.0  # 0 = off; relative bound of the weight perturbation
    awp_lr: float = 1.0
    awp_start_epoch: int = 2
    # run
    folds: tuple[int, ...] = ()  # folds to train now; () = all. The cache is written once all folds exist
    seed: int = 42
    device: str = "auto"  # auto (this rank's GPU if there is one) | cpu | cuda | cuda:<k>
    threads: int = 0  # torch threads; 0 = the CPU cores this process may use
    dvclive: bool = True  # per-epoch metrics under models/<name>/live/

    RUN_KEYS: ClassVar[tuple] = ("folds", "threads", "dvclive", "device", "eval_batch_size")


def validate(cfg: TrainConfig, where: str) -> TrainConfig:
    """Value checks the type system cannot express; one line naming the key and the valid values."""
    for key, valid in CHOICES.items():
        if getattr(cfg, key) not in valid:
            raise StackError(f"{where}: {key} {getattr(cfg, key)!r} is not one of {', '.join(valid)}")
    if cfg.target_weights and (min(cfg.target_weights) < 0 or sum(cfg.target_weights) <= 0):
        raise StackError(f"{where}: target_weights needs non-negative numbers with a positive sum, one per target "
                         f"(or [] for equal weights), got {list(cfg.target_weights)}")
    if len(cfg.adam_betas) != 2:
        raise StackError(f"{where}: adam_betas needs two numbers, e.g. [0.9, 0.999]")
    for key in ("epochs", "batch_size", "eval_batch_size", "accum_steps", "msd_samples", "max_len"):
        if getattr(cfg, key) < 1:
            raise StackError(f"{where}: {key} must be at least 1, got {getattr(cfg, key)}")
    if not 0.0 <= cfg.warmup < 1.0:
        raise StackError(f"{where}: warmup is a fraction of the steps in [0, 1), got {cfg.warmup}")
    if cfg.msd_samples > 1 and cfg.head_dropout <= 0:
        raise StackError(f"{where}: msd_samples={cfg.msd_samples} needs head_dropout > 0 (e.g. 0.2)")
    if cfg.swa and cfg.ema_decay > 0:
        raise StackError(f"{where}: swa and ema_decay both average weights; turn one off")
    if not 0.0 <= cfg.ema_decay < 1.0:
        raise StackError(f"{where}: ema_decay must be in [0, 1), got {cfg.ema_decay}")
    if cfg.swa and not 1 <= cfg.swa_start_epoch <= cfg.epochs:
        raise StackError(f"{where}: swa_start_epoch {cfg.swa_start_epoch} is outside epochs 1..{cfg.epochs}")
    try:
        from stack.backbones.pooling import PoolingSpec

        PoolingSpec.of(cfg).check(trainable=True)
    except ValueError as e:
        raise StackError(f"{where}: {e}") from None
    return cfg


def check_targets(cfg: TrainConfig, task, where: str) -> None:
    """``target_weights`` against the task: one per target (or none)."""
    if cfg.target_weights and len(cfg.target_weights) != task.k:
        raise StackError(f"{where}: target_weights has {len(cfg.target_weights)} numbers, the task has {task.k} "
                         f"targets ({', '.join(task.targets)}); give one per target or []")
