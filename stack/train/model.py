"""Backbone + pooling + regression head, and the backbone surgery fine-tuning needs.

    from stack.train.model import build_model
    tokenizer, model = build_model(cfg, backbone, task=task)   # cfg: TrainConfig, backbone: BackboneConfig
    preds, feats = model(input_ids, attention_mask)            # (b, k) for the task's k targets, (b, model.out_dim)
    tokenizer, model = model_from_folder(cfg, folder, n_out=k)  # the architecture saved beside the fold weights
"""

from __future__ import annotations

import torch
from torch import nn

from stack.backbones.pooling import Pooler, PoolingSpec
from stack.errors import StackError
from stack.task import Task


class Regressor(nn.Module):
    """``backbone`` (a transformers encoder) -> ``pooling`` -> dropout -> linear head with ``n_out`` outputs, its
    bias starting at ``bias`` (the middle of each target's range: scores centre there, not at 0)."""

    def __init__(self, backbone: nn.Module, pooling, head_dropout: float = 0.0, msd_samples: int = 1,
                 n_out: int = Task().k, bias=None):
        super().__init__()
        hidden = backbone.config.hidden_size
        self.backbone = backbone
        self.pool = Pooler(pooling, hidden, backbone.config.num_hidden_layers + 1)
        self.out_dim = self.pool.out_dim
        self.dropout = nn.Dropout(head_dropout)
        self.msd_samples = msd_samples
        self.head = nn.Linear(self.out_dim, n_out)
        nn.init.normal_(self.head.weight, std=getattr(backbone.config, "initializer_range", 0.02))
        with torch.no_grad():
            self.head.bias.copy_(torch.as_tensor(Task().centre if bias is None else bias, dtype=torch.float32)
                                 .expand(n_out))

    def head_params(self):
        """Parameters outside the backbone (pooling + head): they get ``head_lr``."""
        return [p for n, p in self.named_parameters() if not n.startswith("backbone.")]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """``(b, t)`` ids and mask -> (predictions ``(b, n_out)`` float32, pooled features ``(b, out_dim)``)."""
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        feats = self.pool(out.hidden_states, attention_mask).float()
        if self.training and self.msd_samples > 1:
            preds = torch.stack([self.head(self.dropout(feats)) for _ in range(self.msd_samples)]).mean(0)
        else:
            preds = self.head(self.dropout(feats))
        return preds.float(), feats


def embeddings_module(backbone: nn.Module) -> nn.Module:
    emb = getattr(backbone, "embeddings", None)
    if emb is None:
        raise StackError(f"{type(backbone).__name__}: no `embeddings` module; turn freeze_embeddings off")
    return emb


def position_limit(config) -> int | None:
    """Longest input the backbone accepts; None for relative-position models (DeBERTa-v3) with no absolute table."""
    if config.model_type.startswith("deberta") and not getattr(config, "position_biased_input", True):
        return None
    return getattr(config, "max_position_embeddings", None)


def set_dropout(module: nn.Module, p: float) -> None:
    """Every ``nn.Dropout`` inside ``module`` gets probability ``p`` (BERT's SDPA attention reads ``.p`` too)."""
    for m in module.modules():
        if isinstance(m, nn.Dropout):
            m.p = p


def _adapt(cfg, tokenizer, backbone, where: str):
    """The surgery every fine-tuned backbone gets: position check, paragraph token, no pooler, dropout."""
    limit = position_limit(backbone.config)
    if limit is not None and cfg.max_len > limit:
        raise StackError(f"{where}: max_len {cfg.max_len} exceeds the {limit} positions of the backbone; "
                         f"set max_len <= {limit}")
    if cfg.paragraph == "token" and cfg.paragraph_token not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [cfg.paragraph_token]})
        backbone.resize_token_embeddings(len(tokenizer))
    if getattr(backbone, "pooler", None) is not None:
        backbone.pooler = None  # unused by every pooling here; would leave grads None (and upset DDP)
    set_dropout(backbone, cfg.backbone_dropout)
    return tokenizer, backbone


def _regressor(cfg, tokenizer, backbone, where: str, n_out: int, bias=None):
    try:
        model = Regressor(backbone, PoolingSpec.of(cfg), cfg.head_dropout, cfg.msd_samples, n_out, bias)
    except ValueError as e:
        raise StackError(f"{where}: {e}") from None
    return tokenizer, model


def build_model(cfg, backbone_cfg, where: str = "", task: Task | None = None):
    """(tokenizer, Regressor) for a TrainConfig, weights as pretrained, the head freshly initialised for ``task``'s
    targets (default FB3's)."""
    from stack.backbones.loading import load_backbone

    task = task or Task()
    tokenizer, backbone = load_backbone(backbone_cfg)
    return _regressor(cfg, *_adapt(cfg, tokenizer, backbone, where), where, task.k, task.centre)


def save_architecture(tokenizer, model, folder) -> None:
    """The tokenizer and the backbone's config (no weights) into ``folder``: with a fold's weights, all that
    scoring needs, offline."""
    tokenizer.save_pretrained(folder)
    model.backbone.config.save_pretrained(folder)


def model_from_folder(cfg, folder, where: str = "", n_out: int = Task().k):
    """(tokenizer, Regressor with random weights and ``n_out`` outputs) from ``save_architecture``'s folder: load a
    fold's weights next."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    backbone = AutoModel.from_config(AutoConfig.from_pretrained(folder, local_files_only=True)).float()
    return _regressor(cfg, *_adapt(cfg, tokenizer, backbone, where), where, n_out)
