"""Poolings: token states ``(b, t, d)`` + mask ``(b, t)`` -> essay vectors ``(b, d)``, chunk-aware; and layer mixing.

A long essay is split into chunks; each pooling keeps a per-chunk statistic that combines exactly across
chunks (sums for mean/GeM, max for max, ...), so pooling the chunks of an essay equals pooling its tokens.
Before pooling, the chosen hidden layers are mixed by ``mix_layers``: kept side by side (``concat``),
averaged (``mean``, e.g. of the last 4 layers) or averaged with fixed weights (``weighted``).

    pool = get_pooling("mean")
    vec = pool(hidden, mask)                                   # one chunk per row -> (b, d)
    states = mix_layers(out.hidden_states, [-4, -3, -2, -1], "mean")   # [ (b, t, d) ]
"""

from __future__ import annotations

import torch

from stack.errors import StackError

POOLINGS: dict[str, type[Pooling]] = {}
LAYER_MODES = ("concat", "mean", "weighted")


def register(cls):
    if cls.name in POOLINGS:
        raise ValueError(f"pooling {cls.name!r} registered twice")
    POOLINGS[cls.name] = cls
    return cls


def get_pooling(name: str) -> Pooling:
    if name not in POOLINGS:
        raise ValueError(f"unknown pooling {name!r} (valid: {', '.join(sorted(POOLINGS))})")
    return POOLINGS[name]()


def mix_layers(hidden_states, layers, mode: str = "concat", weights=None) -> list[torch.Tensor]:
    """Hidden states (a sequence of ``(b, t, d)``, 0 = embeddings) -> the list of ``(b, t, d)`` to pool.

    ``concat``: one per layer in ``layers``, in the model's dtype (the poolings accumulate in float32, so bf16
    states are never copied whole); ``mean``: their float32 average; ``weighted``: ``sum(w_i h_i) / sum(w_i)``
    with fixed ``weights`` (one per layer, frozen use of a weighted-layer pooling). Empty ``layers``: all of them.
    """
    layers = list(layers) or list(range(len(hidden_states)))
    if mode not in LAYER_MODES:
        raise StackError(f"unknown layer_mode {mode!r} (valid: {', '.join(LAYER_MODES)})")
    try:
        chosen = [hidden_states[i] for i in layers]
    except IndexError:
        raise StackError(f"layers {list(layers)} out of range: this backbone has {len(hidden_states)} hidden states (0 = embeddings)") from None
    if mode == "concat":
        return chosen
    chosen = [h.float() for h in chosen]
    if mode == "mean":
        return [torch.stack(chosen).mean(0)]
    w = torch.as_tensor(list(weights or ()), dtype=torch.float32)
    if w.numel() != len(chosen) or w.sum().item() <= 0 or (w < 0).any():
        raise StackError(f"layer_weights {list(weights or ())} must be {len(chosen)} non-negative numbers (one per entry of layers) with a positive sum")
    return [torch.einsum("l,lbtd->btd", w / w.sum(), torch.stack(chosen))]


class Pooling:
    """``stat`` per chunk, combined across chunks by ``combine`` ('sum' | 'max' | 'min'), then ``finalize``.

    ``stat`` takes states in any float dtype (bf16 from a bf16 model) and returns float32."""

    name = ""
    combine = "sum"

    def stat(self, hidden: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (statistic ``(b, d)``, weight ``(b,)``)."""
        raise NotImplementedError

    def finalize(self, stat: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return stat

    def __call__(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.finalize(*self.stat(hidden, mask))


def _masked_sum(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 sums over the tokens where ``mask`` is 1 (multiplying by 0/1 is exact in any dtype; the sum
    accumulates in float32) and the float32 token counts."""
    return (x * mask.unsqueeze(-1).to(x.dtype)).sum(1, dtype=torch.float32), mask.sum(1).float()


@register
class MeanPooling(Pooling):
    name = "mean"

    def stat(self, hidden, mask):
        return _masked_sum(hidden, mask)

    def finalize(self, stat, weight):
        return stat / weight.clamp(min=1e-9).unsqueeze(-1)


@register
class MaxPooling(Pooling):
    """Padding is filled with -inf (never multiplied by 0), so rows of negative values pool correctly."""

    name = "max"
    combine = "max"

    def stat(self, hidden, mask):
        filled = hidden.masked_fill(~mask.bool().unsqueeze(-1), float("-inf"))
        return filled.max(1).values.float(), mask.sum(1).float()


@register
class MinPooling(Pooling):
    name = "min"
    combine = "min"

    def stat(self, hidden, mask):
        filled = hidden.masked_fill(~mask.bool().unsqueeze(-1), float("inf"))
        return filled.min(1).values.float(), mask.sum(1).float()


@register
class ClsPooling(Pooling):
    """First token of each chunk; a multi-chunk essay gets the mean of its chunks' CLS vectors."""

    name = "cls"

    def stat(self, hidden, mask):
        return hidden[:, 0].float(), torch.ones(hidden.shape[0], device=hidden.device)

    def finalize(self, stat, weight):
        return stat / weight.clamp(min=1e-9).unsqueeze(-1)


@register
class GeMPooling(Pooling):
    """Generalised mean ``(mean(clamp(x, eps)^p))^(1/p)``, p = 3 (values below eps count as eps)."""

    name = "gem"
    p, eps = 3.0, 1e-6

    def stat(self, hidden, mask):
        return _masked_sum(hidden.float().clamp(min=self.eps).pow(self.p), mask)

    def finalize(self, stat, weight):
        return (stat / weight.clamp(min=1e-9).unsqueeze(-1)).pow(1.0 / self.p)
