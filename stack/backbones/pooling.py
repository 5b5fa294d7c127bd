"""One pooling contract for frozen and fine-tuned members: hidden states + mask -> one vector per essay.

Config keys, the same in both kinds: ``pooling`` (one or more token poolings, side by side), ``layers``
(hidden-state indices, 0 = embeddings, -1 = last; ``[]`` = all), ``layer_mode`` (``concat``: each layer pooled
side by side; ``mean``: layers averaged first; ``weighted``: averaged with weights -- fixed ``layer_weights`` in a
frozen member, learned softmax weights initialised from them (uniform if empty) in a fine-tuned one).

Token poolings keep a per-chunk statistic that combines exactly across chunks (sums for mean/GeM, max for max, ...),
so a frozen member pooling a long essay chunk by chunk equals pooling its tokens. ``attention`` has weights: only a
fine-tuned member can learn them.

    pooler = Pooler(PoolingSpec(("mean",), (-4, -3, -2, -1), "concat"), hidden_size=768, n_states=13)
    vec = pooler(out.hidden_states, attention_mask)            # (b, 4 * 768) float32
    states = mix_layers(out.hidden_states, [-1], "concat")     # frozen path: [(b, t, d)] then stat/finalize
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from stack import renamed

TOKEN_POOLINGS: dict[str, type[TokenPooling]] = {}
LAYER_MODES = ("concat", "mean", "weighted")


def register(cls):
    if cls.name in TOKEN_POOLINGS:
        raise ValueError(f"pooling {cls.name!r} registered twice")
    TOKEN_POOLINGS[cls.name] = cls
    return cls


@dataclass(frozen=True)
class PoolingSpec:
    pooling: tuple[str, ...] = ("mean",)
    layers: tuple[int, ...] = (-1,)
    layer_mode: str = "concat"
    layer_weights: tuple[float, ...] = ()

    @classmethod
    def of(cls, cfg) -> PoolingSpec:
        """The pooling keys of a member config (frozen or fine-tuned: the same keys)."""
        return cls(tuple(cfg.pooling), tuple(cfg.layers), cfg.layer_mode, tuple(cfg.layer_weights))

    def check(self, trainable: bool) -> None:
        """ValueError (one line, listing the valid words) for unknown or, in a frozen member, trainable poolings."""
        for name in self.pooling:
            if name not in TOKEN_POOLINGS:
                hint = f"; {name} is now {renamed.POOLINGS[name]}" if name in renamed.POOLINGS else ""
                raise ValueError(f"unknown pooling {name!r} (valid: {', '.join(sorted(TOKEN_POOLINGS))}){hint}")
            if TOKEN_POOLINGS[name].trainable and not trainable:
                raise ValueError(f"pooling {name!r} has weights to learn: use it in a finetune member")
        if not self.pooling:
            raise ValueError("pooling is empty: name at least one (e.g. [mean])")
        if self.layer_mode not in LAYER_MODES:
            raise ValueError(f"unknown layer_mode {self.layer_mode!r} (valid: {', '.join(LAYER_MODES)})")
        if self.layer_mode == "weighted" and not trainable:
            if not self.layer_weights:
                raise ValueError("layer_mode weighted in a frozen member needs layer_weights (one per entry of layers)")
            if self.layers:  # `layers: []` (all): counted once the backbone's depth is known (embed_texts)
                fixed_layer_weights(self.layer_weights, len(self.layers))


def fixed_layer_weights(weights, n_layers: int) -> list[float]:
    """A frozen member's ``layer_weights``, checked: ``n_layers`` non-negative numbers with a positive sum."""
    fixed = [float(x) for x in (weights or ())]
    if len(fixed) != n_layers or sum(fixed) <= 0 or min(fixed) < 0:
        raise ValueError(f"layer_weights {fixed} must be {n_layers} non-negative numbers (one per entry of layers) "
                         "with a positive sum")
    return fixed


def chosen_layers(layers, n_states: int) -> list[int]:
    layers = list(layers) or list(range(n_states))
    bad = [i for i in layers if not -n_states <= i < n_states]
    if bad:
        raise ValueError(f"layers {list(layers)} out of range: this backbone has {n_states} hidden states (0 = embeddings)")
    return layers


def mix_layers(hidden_states, layers, mode: str = "concat", weights=None) -> list[torch.Tensor]:
    """Hidden states (a sequence of ``(b, t, d)``) -> the list of ``(b, t, d)`` to pool.

    ``concat``: one per layer, in the model's dtype (the poolings accumulate in float32, so bf16 states are never
    copied whole); ``mean``: their float32 average; ``weighted``: ``sum(w_i h_i) / sum(w_i)`` with ``weights``
    (fixed numbers or a tensor of learned weights, one per layer). Empty ``layers``: all of them."""
    if mode not in LAYER_MODES:
        raise ValueError(f"unknown layer_mode {mode!r} (valid: {', '.join(LAYER_MODES)})")
    chosen = [hidden_states[i] for i in chosen_layers(layers, len(hidden_states))]
    if mode == "concat":
        return chosen
    stacked = torch.stack([h.float() for h in chosen])
    if mode == "mean":
        return [stacked.mean(0)]
    if not isinstance(weights, torch.Tensor):  # fixed numbers from a config (learned ones sum to 1)
        weights = torch.tensor(fixed_layer_weights(weights, len(chosen)), dtype=torch.float32, device=stacked.device)
    return [torch.einsum("l,lbtd->btd", weights / weights.sum(), stacked)]


class TokenPooling(nn.Module):
    """``stat`` per chunk, combined across chunks by ``combine`` ('sum' | 'max' | 'min'), then ``finalize``.

    ``stat`` takes states in any float dtype (bf16 from a bf16 model) and returns float32."""

    name, combine, trainable = "", "sum", False

    def __init__(self, hidden_size: int = 0):
        super().__init__()

    def stat(self, hidden: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (statistic ``(b, d)``, weight ``(b,)``)."""
        raise NotImplementedError

    def finalize(self, stat: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return stat

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.finalize(*self.stat(hidden, mask))


def _masked_sum(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 sums over the tokens where ``mask`` is 1 (multiplying by 0/1 is exact in any dtype; the sum
    accumulates in float32) and the float32 token counts."""
    return (x * mask.unsqueeze(-1).to(x.dtype)).sum(1, dtype=torch.float32), mask.sum(1).float()


def _per_token_mean(stat, weight):
    return stat / weight.clamp(min=1e-9).unsqueeze(-1)


@register
class MeanPooling(TokenPooling):
    name = "mean"

    def stat(self, hidden, mask):
        return _masked_sum(hidden, mask)

    finalize = staticmethod(_per_token_mean)


@register
class MaxPooling(TokenPooling):
    """Padding is filled with -inf (never multiplied by 0), so rows of negative values pool correctly."""

    name, combine = "max", "max"

    def stat(self, hidden, mask):
        filled = hidden.masked_fill(~mask.bool().unsqueeze(-1), float("-inf"))
        return filled.max(1).values.float(), mask.sum(1).float()


@register
class MinPooling(TokenPooling):
    name, combine = "min", "min"

    def stat(self, hidden, mask):
        filled = hidden.masked_fill(~mask.bool().unsqueeze(-1), float("inf"))
        return filled.min(1).values.float(), mask.sum(1).float()


@register
class ClsPooling(TokenPooling):
    """First token of each chunk; a multi-chunk essay gets the mean of its chunks' CLS vectors."""

    name = "cls"

    def stat(self, hidden, mask):
        return hidden[:, 0].float(), torch.ones(hidden.shape[0], device=hidden.device)

    finalize = staticmethod(_per_token_mean)


@register
class GeMPooling(TokenPooling):
    """Generalised mean ``(mean(clamp(x, eps)^p))^(1/p)``, p = 3 (values below eps count as eps)."""

    name, p, eps = "gem", 3.0, 1e-6

    def stat(self, hidden, mask):
        return _masked_sum(hidden.float().clamp(min=self.eps).pow(self.p), mask)

    def finalize(self, stat, weight):
        return _per_token_mean(stat, weight).pow(1.0 / self.p)


@register
class AttentionPooling(TokenPooling):
    """Softmax over tokens of a learned score ``w2 tanh(W1 h)``; padding gets zero weight (fine-tuning only)."""

    name, trainable = "attention", True

    def __init__(self, hidden_size: int = 0):
        super().__init__()
        self.score = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.Tanh(), nn.Linear(hidden_size, 1))

    def forward(self, hidden, mask):
        h = hidden.float()
        s = self.score(h).squeeze(-1).masked_fill(~mask.bool(), float("-inf"))
        return (torch.softmax(s, dim=1).unsqueeze(-1) * h).sum(1)


class Pooler(nn.Module):
    """Layer mixing then token poolings, side by side -> ``(b, out_dim)`` float32; the fine-tuned members' head input.

    ``layer_mode: weighted`` learns softmax weights over ``layers`` (initialised from ``layer_weights``)."""

    def __init__(self, spec: PoolingSpec, hidden_size: int, n_states: int):
        super().__init__()
        spec.check(trainable=True)
        self.spec, self.layers = spec, chosen_layers(spec.layers, n_states)
        self.tokens = nn.ModuleList(TOKEN_POOLINGS[p](hidden_size) for p in spec.pooling)
        n_mixed = len(self.layers) if spec.layer_mode == "concat" else 1
        self.out_dim = hidden_size * len(spec.pooling) * n_mixed
        if spec.layer_mode == "weighted":
            init = torch.as_tensor(spec.layer_weights or [1.0] * len(self.layers), dtype=torch.float32)
            if init.numel() != len(self.layers) or (init <= 0).any():
                raise ValueError(f"layer_weights must be {len(self.layers)} positive numbers, one per layer")
            self.logits = nn.Parameter(init.log())

    def forward(self, hidden_states, mask: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(self.logits, 0) if self.spec.layer_mode == "weighted" else None
        states = mix_layers(hidden_states, self.layers, self.spec.layer_mode, weights)
        return torch.cat([p(h, mask).float() for h in states for p in self.tokens], dim=1)
