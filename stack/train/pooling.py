"""Trainable poolings for fine-tuning: all hidden states + mask -> one vector per essay.

Contract: ``pool(hidden_states, mask)`` with ``hidden_states`` the backbone's tuple of ``(b, t, d)`` tensors
(index 0 = embeddings, -1 = last layer) and ``mask`` ``(b, t)`` -> ``(b, pool.out_dim)`` float32.
Parameter-free ones (mean, max, cls, gem) reuse ``stack.backbones.pooling`` on the last layer.

    pool = make_pooling("attention", hidden_size=384, n_layers=6)
    vec = pool(out.hidden_states, attention_mask)          # (b, 384)
"""

from __future__ import annotations

import torch
from torch import nn

from stack.backbones.pooling import get_pooling

TRAIN_POOLINGS: dict[str, type[nn.Module]] = {}


def register(cls):
    if cls.name in TRAIN_POOLINGS:
        raise ValueError(f"training pooling {cls.name!r} registered twice")
    TRAIN_POOLINGS[cls.name] = cls
    return cls


def make_pooling(name: str, hidden_size: int, n_layers: int) -> nn.Module:
    """A pooling by name; unknown names raise ValueError listing the valid ones."""
    if name not in TRAIN_POOLINGS:
        raise ValueError(f"unknown pooling {name!r} (valid: {', '.join(sorted(TRAIN_POOLINGS))})")
    return TRAIN_POOLINGS[name](hidden_size, n_layers)


def _mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return get_pooling("mean")(h.float(), mask)


class _Frozen(nn.Module):
    """A ``stack.backbones.pooling`` statistic of the last layer."""

    name = ""

    def __init__(self, hidden_size: int, n_layers: int):
        super().__init__()
        self.out_dim = hidden_size
        self.pool = get_pooling(self.name)

    def forward(self, hidden_states, mask):
        return self.pool(hidden_states[-1].float(), mask)


for _name in ("mean", "max", "cls", "gem"):
    register(type(f"{_name.title()}Pool", (_Frozen,), {"name": _name}))


@register
class AttentionPool(nn.Module):
    """Softmax over tokens of a learned score ``w2 tanh(W1 h)``; padding gets zero weight."""

    name = "attention"

    def __init__(self, hidden_size: int, n_layers: int):
        super().__init__()
        self.out_dim = hidden_size
        self.score = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.Tanh(), nn.Linear(hidden_size, 1))

    def forward(self, hidden_states, mask):
        h = hidden_states[-1].float()
        s = self.score(h).squeeze(-1).masked_fill(~mask.bool(), float("-inf"))
        w = torch.softmax(s, dim=1).unsqueeze(-1)
        return (w * h).sum(1)


@register
class WeightedLayerPool(nn.Module):
    """Mean pooling of a learned softmax-weighted average of all encoder layers (embeddings excluded)."""

    name = "weighted_layer"

    def __init__(self, hidden_size: int, n_layers: int):
        super().__init__()
        self.out_dim = hidden_size
        self.logits = nn.Parameter(torch.zeros(n_layers))

    def forward(self, hidden_states, mask):
        layers = torch.stack([h.float() for h in hidden_states[1:]])  # (L, b, t, d)
        w = torch.softmax(self.logits, 0).view(-1, 1, 1, 1)
        return _mean((w * layers).sum(0), mask)


@register
class ConcatLast4Pool(nn.Module):
    """Mean pooling of each of the last four layers, side by side -> ``(b, 4 d)``."""

    name = "concat_last4"

    def __init__(self, hidden_size: int, n_layers: int):
        super().__init__()
        self.k = min(4, n_layers)
        self.out_dim = hidden_size * self.k

    def forward(self, hidden_states, mask):
        return torch.cat([_mean(h, mask) for h in hidden_states[-self.k :]], dim=1)
