"""How deep an encoder runs: its list of transformer blocks, and a copy cut after the deepest hidden state that
anyone reads. Hidden state ``i`` (0 = the embeddings) comes out of block ``i``; blocks past the deepest state a
member caches (and so past any head over its cache, which can only read those) are pure cost, so an inference
copy drops them: the states it keeps are the same numbers, for a fraction of the work.

    from stack.backbones.depth import encoder_layers, truncate
    blocks = encoder_layers(model)                     # the nn.ModuleList LLRD, freezing and re-init walk
    truncate(fast, deepest=9)                          # in place on an inference copy: blocks 10.. dropped
"""

from __future__ import annotations

from torch import nn

from stack.errors import StackError


def encoder_layers(backbone: nn.Module) -> nn.ModuleList:
    """The backbone's list of transformer blocks (``encoder.layer`` for BERT, MPNet and DeBERTa)."""
    n = backbone.config.num_hidden_layers
    for name, module in backbone.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n and name.split(".")[-1] in ("layer", "layers"):
            return module
    raise StackError(f"{type(backbone).__name__}: no list of {n} encoder layers found; LLRD/freeze/re-init need one")


def blocks_run(n_blocks: int, deepest: int) -> int:
    """How many of ``n_blocks`` blocks run for hidden states ``0..deepest``: at least one (transformers collects
    hidden states from its blocks: with none it returns none, not the embeddings)."""
    return min(max(deepest, 1), n_blocks)


def truncate(model: nn.Module, deepest: int) -> int:
    """Keep only the ``blocks_run`` blocks that hidden states ``0..deepest`` need, ``model`` being an inference
    copy, changed in place; -> how many blocks it now runs. A model without a recognisable block list is left
    whole."""
    n = model.config.num_hidden_layers
    deepest = blocks_run(n, deepest)
    if deepest == n:
        return n
    try:
        blocks = encoder_layers(model)
    except StackError:
        return n
    parents = [(module, name) for module in model.modules() for name, child in module.named_children()
               if child is blocks]
    for module, name in parents:  # replace the list where it hangs, so forward() iterates fewer blocks
        setattr(module, name, nn.ModuleList(list(blocks)[:deepest]))
    model.config.num_hidden_layers = deepest
    return deepest
