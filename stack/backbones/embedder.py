"""Frozen inference: essays -> pooled hidden states ``(n, dim)`` float32, chunk by chunk, shard by shard.

Essays are length-sorted into shards of ``shard_size``; each shard's chunks are length-sorted and padded per
batch (stack.backbones.chunks) and run under ``inference_mode`` in the precision stack.runtime picks -- bf16 where
the device computes it natively, kept only if the embeddings of a short sample match fp32 with cosine > 0.999 --
with weights packed for oneDNN (stack.backbones.packed) and, in bf16, the CPU attention of
stack.backbones.attention, inside stack.runtime's heap reuse; in fp32 on the CPU ONNX Runtime runs the blocks
(stack.backbones.ort; ``engine: torch`` keeps PyTorch); on a GPU the model runs as it is, in bf16/fp16. The copy
that runs stops at the deepest hidden state the member's ``layers`` name (stack.backbones.depth): a member caching
states 4-9 of a 12-block encoder runs 9 blocks.
``on_shard`` receives each shard as it finishes (the frozen member stores it, so a killed run resumes there).

    emb, precision = embed_texts(texts, tokenizer, model, cfg)     # cfg: a frozen member's config
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import torch

from stack import runtime
from stack.backbones.attention import use_cpu_attention
from stack.backbones.chunks import Chunk, batches, chunks_from_ids, encode, shards
from stack.backbones.depth import truncate
from stack.backbones.packed import pack_linears
from stack.backbones.pooling import TOKEN_POOLINGS, chosen_layers, fixed_layer_weights, mix_layers
from stack.errors import StackError

CHECK_ESSAYS, CHECK_LEN = 4, 128  # the bf16-vs-fp32 check: the first CHECK_LEN tokens of CHECK_ESSAYS essays


def states(cfg, model, where: str = "") -> list[int]:
    """The hidden states (absolute: 0 = the embeddings) ``cfg.layers`` names on ``model``, checked: a bad list or
    layer weights are one line naming ``where``. The deepest of them is where the copy that runs stops."""
    try:
        n_states = model.config.num_hidden_layers + 1
        layers = [i % n_states for i in chosen_layers(cfg.layers, n_states)]
        if cfg.layer_mode == "weighted":
            fixed_layer_weights(cfg.layer_weights, len(layers))
    except ValueError as e:
        raise StackError(f"{where}: {e}") from None
    return layers


def inference_model(model, dtype: torch.dtype, rows: int, device: torch.device = torch.device("cpu"),
                    deepest: int | None = None):
    """A copy of ``model`` to embed with, in ``dtype`` on ``device``, running only the blocks hidden states
    ``0..deepest`` need (None: all). On the CPU its linear weights are packed once for oneDNN and, in bf16, it runs
    stack.backbones.attention's attention where the architecture allows. ``rows``: tokens per batch, a layout
    hint. ``model`` itself is not changed."""
    fast = copy.deepcopy(model)
    if deepest is not None:
        truncate(fast, deepest)
    fast = fast.to(device=device, dtype=dtype).eval()
    if device.type == "cpu":
        if dtype == torch.bfloat16:
            use_cpu_attention(fast)
        pack_linears(fast, rows)
    return fast


def prepare(model, sample: list[Chunk], cfg, device: torch.device, where: str = "", precision: str | None = None,
            threshold: float = 0.999):
    """The model to run and its precision -> (model, precision). Given ``precision`` (a resumed run's), it is
    used as it is; else ``cfg.precision``: ``auto`` takes stack.runtime's half precision for ``device`` if its
    embeddings match the unmodified fp32 model's with cosine > ``threshold`` on ``sample``, else fp32. In fp32 on
    the CPU, ``cfg.engine`` (stack.runtime.engine) may hand the blocks to ONNX Runtime (stack.backbones.ort), kept
    if its embeddings of ``sample`` match PyTorch's with cosine > 0.99999.

    ``sample`` is short (the first ``CHECK_LEN`` tokens of a few essays): pooling averages rounding error away,
    so a short sample is the stricter test, and its fp32 pass costs a fraction of a second."""
    rows = cfg.batch_size * cfg.max_len
    has_blocks = getattr(getattr(model, "config", None), "num_hidden_layers", None) is not None
    deepest = max(states(cfg, model, where)) if has_blocks else None  # the deepest hidden state the member reads
    want = precision or runtime.precision(cfg.precision, device, where)
    runtime.engine(cfg.engine, device, want, where)  # a bad engine is refused whatever precision follows
    ref = None

    def matches(fast, at_least: float) -> bool:
        nonlocal ref
        ref = embed_chunks(model, sample, cfg) if ref is None else ref
        got = embed_chunks(fast, sample, cfg, device=device)
        cos = torch.nn.functional.cosine_similarity(torch.from_numpy(ref), torch.from_numpy(got), dim=1).min()
        return cos.item() > at_least

    if want != "fp32":
        fast = inference_model(model, runtime.torch_dtype(want), rows, device, deepest)
        if precision or cfg.precision != "auto" or matches(fast, threshold):
            return fast, want
        want = "fp32"
    if deepest is not None and runtime.engine(cfg.engine, device, want, where) == "onnx":
        from stack.backbones import ort

        fast = ort.encoder(model, deepest, torch.get_num_threads(), where, lambda enc: matches(enc, 0.99999))
        if fast is not None:
            return fast, want
    return inference_model(model, torch.float32, rows, device, deepest), want


def embed_chunks(model, chunks: list[Chunk], cfg, pad_id: int = 0, progress=None,
                 device: torch.device = torch.device("cpu")) -> np.ndarray:
    """Pool every essay over all of its chunks (``model`` on ``device``) -> float32 ``(n_essays, dim)``."""
    poolings = [TOKEN_POOLINGS[p]() for p in cfg.pooling]
    n_essays = max(c.essay for c in chunks) + 1
    acc: list[tuple] = []  # per (state, pooling): (stat (n, d), weight (n,))
    with torch.inference_mode():
        for idx, ids, attn, pool in batches(chunks, cfg.batch_size, pad_id):
            if device.type != "cpu":
                ids, attn, pool = ids.to(device), attn.to(device), pool.to(device)
            out = model(input_ids=ids, attention_mask=attn, output_hidden_states=True)
            states = mix_layers(out.hidden_states, cfg.layers, cfg.layer_mode, cfg.layer_weights)
            essays = torch.tensor([chunks[j].essay for j in idx])
            for slot, (h, p) in enumerate((h, p) for h in states for p in poolings):
                stat, weight = (t.cpu() for t in p.stat(h, pool))
                if len(acc) <= slot:
                    init = {"sum": 0.0, "max": float("-inf"), "min": float("inf")}[p.combine]
                    acc.append((torch.full((n_essays, stat.shape[1]), init), torch.zeros(n_essays)))
                total, wsum = acc[slot]
                if p.combine == "sum":
                    total.index_add_(0, essays, stat)
                else:
                    rows = essays[:, None].expand_as(stat)
                    total.scatter_reduce_(0, rows, stat, "amax" if p.combine == "max" else "amin")
                wsum.index_add_(0, essays, weight)
            if progress is not None:
                progress(len(idx))
    parts = [p.finalize(*acc[slot]) for slot, p in enumerate(poolings * (len(acc) // len(poolings)))]
    return torch.cat(parts, dim=1).numpy().astype(np.float32)


def embed_texts(texts: list[str], tokenizer, model, cfg, where: str = "", precision: str | None = None,
                progress=None, on_shard=None, encoded: list[list[int]] | None = None) -> tuple[np.ndarray, str]:
    """Essay embeddings ``(n, dim)`` float32 and the precision used (see ``prepare``).

    Essays are length-sorted (longest first) and embedded ``cfg.shard_size`` at a time; ``on_shard(rows, emb,
    precision)`` is called with each finished shard's positions in ``texts`` and its embeddings. ``encoded`` is
    ``encode(texts, tokenizer)`` when the caller already has it."""
    runtime.set_threads(cfg.threads)
    model.eval()
    cfg = dataclasses.replace(cfg, layers=tuple(states(cfg, model, where)))  # absolute: the copy that runs is cut
    encoded = encode(texts, tokenizer) if encoded is None else encoded
    sample = chunks_from_ids(encoded[:CHECK_ESSAYS], tokenizer, min(cfg.max_len, CHECK_LEN), 0, True)
    device = runtime.device(cfg.device, where)
    run_model, precision = prepare(model, sample, cfg, device, where, precision)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = None
    with runtime.heap_reuse():
        for rows in shards(encoded, cfg.shard_size):
            chunks = chunks_from_ids([encoded[i] for i in rows], tokenizer, cfg.max_len, cfg.stride, cfg.truncate)
            got = embed_chunks(run_model, chunks, cfg, pad, progress, device)
            if on_shard is not None:
                on_shard(rows, got, precision)
            if out is None:
                out = np.empty((len(texts), got.shape[1]), np.float32)
            out[rows] = got
    return out, precision
