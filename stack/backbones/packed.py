"""Linear layers whose weights are packed once for oneDNN, for frozen inference on the CPU.

``nn.Linear`` hands oneDNN a row-major weight on every call and oneDNN reorders it into its blocked layout each
time; for MiniLM's 384-wide layers on 2,048-row batches that reorder is about a tenth of the embedding stage.
Packing each weight once (what ``torch.compile``'s freezing pass does for the CPU) removes it; the packed layer
computes exactly what ``nn.Linear`` does (tests compare them). A transformer block's up-projection followed by an
exact GELU (the ``dense`` + ``intermediate_act_fn`` pair of BERT, RoBERTa, MPNet, DeBERTa, ...) becomes one
call with GELU fused into the matmul, saving a pass over the widest activation. Where PyTorch lacks oneDNN or the
packing ops, or where this CPU's oneDNN cannot build them in the model's dtype (bf16 on an AVX2-only CPU:
stack.runtime.onednn), nothing is replaced.

    from stack.backbones.packed import pack_linears
    n = pack_linears(model, rows=16 * 128)        # in place, on an inference-only copy; -> layers packed
"""

from __future__ import annotations

import torch

from stack import runtime


class PackedLinear(torch.nn.Module):
    """``nn.Linear`` (then exact GELU if ``gelu``) for inference with a oneDNN-packed weight;
    ``(..., in) -> (..., out)``."""

    def __init__(self, linear: torch.nn.Linear, rows: int, gelu: bool = False):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.post = ("gelu", "none") if gelu else ("none", "")
        self.register_buffer("packed", torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), rows),
                             persistent=False)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attr, algorithm = self.post
        rows = x.reshape(-1, self.in_features)
        y = torch.ops.mkldnn._linear_pointwise(rows, self.packed, self.bias, attr, [], algorithm)
        return y.view(*x.shape[:-1], self.out_features)


def packable(dtype: torch.dtype) -> bool:
    """Whether linears in ``dtype`` can be packed on this CPU (stack.runtime.onednn's probe)."""
    return runtime.onednn(dtype)


def _exact_gelu(module) -> bool:
    if isinstance(module, torch.nn.GELU):
        return module.approximate == "none"
    return type(module).__name__ == "GELUActivation" and getattr(module, "act", None) is torch.nn.functional.gelu


def _packs(module) -> bool:
    return type(module) is torch.nn.Linear and module.weight.device.type == "cpu" and packable(module.weight.dtype)


def pack_linears(model: torch.nn.Module, rows: int) -> int:
    """Replace every CPU ``nn.Linear`` of ``model`` by a :class:`PackedLinear` (``rows``: the usual batch rows,
    a hint for oneDNN's layout), fusing exact GELU where an intermediate block applies it to its ``dense``
    output. The model can no longer be trained, moved or saved: pack a copy. -> the number of layers packed."""
    rows, n = max(1, rows), 0
    for block in list(model.modules()):
        dense, act = getattr(block, "dense", None), getattr(block, "intermediate_act_fn", None)
        if _packs(dense) and _exact_gelu(act):
            block.dense, block.intermediate_act_fn, n = PackedLinear(dense, rows, gelu=True), torch.nn.Identity(), n + 1
    linears = [(parent, name, child) for parent in model.modules()
               for name, child in parent.named_children() if _packs(child)]
    for parent, name, child in linears:
        setattr(parent, name, PackedLinear(child, rows))
    return n + len(linears)
