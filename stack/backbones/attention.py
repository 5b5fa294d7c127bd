"""Attention for frozen bf16 inference on the CPU, plugged into transformers' attention interface.

PyTorch's CPU flash-attention kernel works in small query blocks with one GEMM call per block and head, so on
short chunks with narrow heads (MiniLM: 128 tokens, 32-dim heads) the calls cost more than the arithmetic. For
sequences of at most ``SHORT`` tokens, three whole-batch calls are faster: ``q @ (k * scale)^T``, softmax,
``@ v`` (measured in benchmarks/embed_throughput.py). It computes bidirectional attention, as encoders do; causal
or grouped-query attention, longer sequences, training, autograd and other devices go to transformers' own
``sdpa`` function, so the switch changes nothing beyond bf16 rounding, which ``stack.backbones.embedder.prepare`` checks
against fp32 before the model is used.

    from stack.backbones.attention import use_cpu_attention
    use_cpu_attention(model)         # -> True where the model takes pluggable attention (BERT, RoBERTa, ...)
"""

from __future__ import annotations

import torch

from stack import runtime

NAME = "stack_cpu"
ONEDNN_SOFTMAX = True  # use oneDNN's softmax where this CPU builds it (stack.runtime.onednn); False: never
SHORT = 128  # up to this many tokens the whole-batch path wins (longer: the flash kernel's quadratic saving)


def cpu_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """``(b, h, t, d)`` query/key/value + boolean ``(b, 1, t, t)`` mask (True = attend) or None -> ``(b, t, h, d)``."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    causal = kwargs.get("is_causal") or getattr(module, "is_causal", False)
    grouped = key.shape[1] != query.shape[1]
    if (query.device.type != "cpu" or module.training or torch.is_grad_enabled() or query.shape[-2] > SHORT
            or causal or grouped):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    # scale k (t x d, cheaper than scaling the t x t scores) into a contiguous tensor: its transpose is then a
    # plain strided view that the matmul reads without the copy a transposed head-split view costs
    k = torch.mul(key, scale, out=torch.empty(key.shape, dtype=key.dtype, device=key.device))
    scores = torch.matmul(query, k.transpose(-1, -2))
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores.masked_fill_(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores += attention_mask
    return torch.matmul(softmax(scores), value).transpose(1, 2).contiguous(), None


def softmax(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim, by oneDNN where this CPU builds it in ``scores``' dtype (stack.runtime.onednn):
    its vectorised exp makes the round trip through oneDNN's layout (two copies) 1.3-1.7x faster than
    ``torch.softmax`` on bf16 attention scores. Elsewhere (bf16 on an AVX2-only CPU) ``torch.softmax``."""
    if ONEDNN_SOFTMAX and scores.is_contiguous() and runtime.onednn(scores.dtype):
        return torch.softmax(scores.to_mkldnn(), dim=-1).to_dense()
    return torch.softmax(scores, dim=-1)


def _register() -> bool:
    try:
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
        from transformers.modeling_utils import AttentionInterface
    except ImportError:  # transformers without pluggable attention: models keep their own
        return False
    AttentionInterface.register(NAME, cpu_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)  # boolean masks, None when nothing is padded
    return True


def use_cpu_attention(model) -> bool:
    """Switch ``model`` (in place) to :func:`cpu_attention` if its architecture supports pluggable attention."""
    if not getattr(model, "_supports_attention_backend", False) or not hasattr(model, "set_attn_implementation"):
        return False
    if not _register():
        return False
    model.set_attn_implementation(NAME)
    return model.config._attn_implementation == NAME
