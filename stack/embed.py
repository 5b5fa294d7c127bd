"""Frozen stage one: embed whole essays with a backbone, fit a ridge head per fold, write the cache.

Long essays are split into overlapping chunks of ``max_len`` tokens (``stride`` tokens shared); each token
is pooled once, so an essay's vector is the pooling of all its tokens. Essays are length-sorted into shards of
``shard_size``; each shard's chunks are length-sorted and padded per batch, run under ``inference_mode`` in bf16
where the CPU supports it and it matches fp32 on a sample (cosine > 0.999), with weights packed for oneDNN
(stack.backbones.packed), the CPU attention of stack.backbones.attention and glibc's heap kept for reuse
(stack.runtime) -- or on the GPU in bf16/fp16 when there is one (``device: auto``) -- and written as the shard finishes
(stack.shards): memory stays bounded and an interrupted run resumes from the last finished shard.

    stack embed minilm                    # cache/minilm/{train,test}.parquet
    stack embed minilm --set pooling=[mean,max] --set layers=[-1,-2]
    stack embed tfidf                     # other kinds (configs/models/<name>.yaml `kind:`) dispatch from here
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

from stack.backbones.attention import use_cpu_attention
from stack.backbones.packed import pack_linears
from stack.backbones.pooling import get_pooling, mix_layers
from stack.errors import StackError
from stack.runtime import heap_reuse, set_threads


@dataclass
class Chunk:
    essay: int
    ids: list[int]
    pool_mask: list[int]  # 0 on tokens already pooled in the previous chunk (the overlap), else 1


def chunk_essay(ids: list[int], window: int, stride: int, truncate: bool) -> list[tuple[list[int], int]]:
    """Split token ids (no specials) into windows; -> [(ids, n_overlap_with_previous)]."""
    if truncate or len(ids) <= window:
        return [(ids[:window], 0)]
    if not 0 <= stride < window:
        raise StackError(f"stride must be in [0, max_len - specials), got {stride} for a {window}-token window")
    step = window - stride
    out, start, prev_end = [], 0, 0
    while True:
        end = min(start + window, len(ids))
        out.append((ids[start:end], max(prev_end - start, 0)))
        if end == len(ids):
            return out
        prev_end, start = end, start + step


def encode(texts: list[str], tokenizer) -> list[list[int]]:
    """Token ids of each text, no special tokens, no truncation."""
    return tokenizer(list(texts), add_special_tokens=False, truncation=False, verbose=False)["input_ids"]


def chunks_from_ids(encoded: list[list[int]], tokenizer, max_len: int, stride: int, truncate: bool) -> list[Chunk]:
    """Chunks (with CLS/SEP or BOS/EOS added) of every essay; ``Chunk.essay`` indexes ``encoded``."""
    cls_id = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    sep_id = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    head, tail = ([cls_id] if cls_id is not None else []), ([sep_id] if sep_id is not None else [])
    window = max_len - len(head) - len(tail)
    chunks = []
    for i, ids in enumerate(encoded):
        for piece, overlap in chunk_essay(ids, window, stride, truncate):
            mask = [1] * len(head) + [0] * overlap + [1] * (len(piece) - overlap) + [1] * len(tail)
            chunks.append(Chunk(i, head + piece + tail, mask))
    return chunks


def shards(encoded: list[list[int]], size: int) -> list[list[int]]:
    """Essay positions, longest first (ties in file order), ``size`` per shard."""
    order = sorted(range(len(encoded)), key=lambda i: (-len(encoded[i]), i))
    size = max(1, size)
    return [order[s : s + size] for s in range(0, len(order), size)]


def _batches(chunks: list[Chunk], batch_size: int, pad_id: int):
    """Length-sorted batches, each padded to its longest chunk -> (chunk indices, ids, attention mask, pool mask)."""
    order = sorted(range(len(chunks)), key=lambda j: -len(chunks[j].ids))
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        width = len(chunks[idx[0]].ids)
        gaps = [width - len(chunks[j].ids) for j in idx]
        ids = torch.tensor([chunks[j].ids + [pad_id] * g for j, g in zip(idx, gaps)], dtype=torch.long)
        attn = torch.tensor([[1] * (width - g) + [0] * g for g in gaps], dtype=torch.long)
        pool = torch.tensor([chunks[j].pool_mask + [0] * g for j, g in zip(idx, gaps)], dtype=torch.long)
        yield idx, ids, attn, pool


CHECK_ESSAYS, CHECK_LEN = 4, 128  # the bf16-vs-fp32 check: the first CHECK_LEN tokens of CHECK_ESSAYS essays
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def bf16_supported() -> bool:
    return bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)())


def embed_device(cfg) -> torch.device:
    """``cfg.device``: ``auto`` (the first CUDA device when there is one, else the CPU), ``cpu``, ``cuda[:k]``."""
    if cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if cfg.device == "auto":
        return torch.device("cuda")
    bad = f"configs/models/{cfg.name}.yaml: device {cfg.device!r} is not one of auto, cpu, cuda, cuda:<k>"
    if not cfg.device.startswith("cuda"):
        raise StackError(bad)
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    try:
        device = torch.device(cfg.device)
    except RuntimeError:
        raise StackError(bad) from None
    if (device.index or 0) >= visible:
        seen = "1 CUDA device is" if visible == 1 else f"{visible or 'no'} CUDA devices are"
        raise StackError(f"configs/models/{cfg.name}.yaml: device {cfg.device!r}, but {seen} visible; "
                         "set `device: auto` (or cpu)")
    return device


def fast_dtype(device: torch.device) -> str | None:
    """The half-precision dtype worth trying on ``device``: bf16 on CPUs with native bf16 (oneDNN) and on CUDA
    devices that support it, fp16 on older CUDA devices, none otherwise."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    return "bf16" if bf16_supported() else None


def inference_model(model, dtype: torch.dtype, rows: int, device: torch.device = torch.device("cpu")):
    """A copy of ``model`` to embed with, in ``dtype`` on ``device``. On the CPU its linear weights are packed
    once for oneDNN (stack.backbones.packed) and, in bf16, it runs stack.backbones.attention's attention where the
    architecture allows. ``rows``: tokens per batch, a layout hint. ``model`` itself is not changed."""
    fast = copy.deepcopy(model).to(device=device, dtype=dtype).eval()
    if device.type == "cpu":
        if dtype == torch.bfloat16:
            use_cpu_attention(fast)
        pack_linears(fast, rows)
    return fast


def check_dtype(cfg, device: torch.device) -> None:
    where = f"configs/models/{cfg.name}.yaml"
    if cfg.dtype not in ("auto", *DTYPES):
        raise StackError(f"{where}: dtype {cfg.dtype!r} is not one of auto, {', '.join(DTYPES)}")
    if cfg.dtype == "fp16" and device.type == "cpu":
        raise StackError(f"{where}: dtype fp16 needs a CUDA device; use bf16 or auto on the CPU")


def choose_dtype(model, sample, cfg, device: torch.device = torch.device("cpu"), threshold: float = 0.999):
    """The model to run (see inference_model) -> (model, dtype name). ``dtype: auto`` takes the device's
    fast_dtype if its embeddings match the unmodified fp32 model (on the CPU) with cosine > ``threshold`` on
    ``sample``, else fp32; ``bf16``/``fp16``/``fp32`` are taken as given.

    ``sample`` is short (the first ``CHECK_LEN`` tokens of a few essays): pooling averages rounding error away,
    so a short sample is the stricter test, and its fp32 pass costs a fraction of a second."""
    check_dtype(cfg, device)
    rows = cfg.batch_size * cfg.max_len
    want = fast_dtype(device) if cfg.dtype == "auto" else cfg.dtype
    if want in (None, "fp32"):
        return inference_model(model, torch.float32, rows, device), "fp32"
    fast = inference_model(model, DTYPES[want], rows, device)
    if cfg.dtype != "auto":
        return fast, want
    ref, got = _embed_chunks(model, sample, cfg), _embed_chunks(fast, sample, cfg, device=device)
    cos = torch.nn.functional.cosine_similarity(torch.from_numpy(ref), torch.from_numpy(got), dim=1).min().item()
    return (fast, want) if cos > threshold else (inference_model(model, torch.float32, rows, device), "fp32")


def _embed_chunks(model, chunks: list[Chunk], cfg, pad_id: int = 0, progress=None,
                  device: torch.device = torch.device("cpu")) -> np.ndarray:
    """Pool every essay over all of its chunks (``model`` on ``device``) -> float32 ``(n_essays, dim)``."""
    poolings = [get_pooling(p) for p in cfg.pooling]
    n_essays = max(c.essay for c in chunks) + 1
    acc: list[tuple] = []  # per (state, pooling): (stat (n, d), weight (n,))
    with torch.inference_mode():
        for idx, ids, attn, pool in _batches(chunks, cfg.batch_size, pad_id):
            if device.type != "cpu":
                ids, attn, pool = ids.to(device), attn.to(device), pool.to(device)
            out = model(input_ids=ids, attention_mask=attn, output_hidden_states=True)
            states = mix_layers(out.hidden_states, cfg.layers, cfg.layer_mode, cfg.layer_weights)
            essays = torch.tensor([chunks[j].essay for j in idx])
            slot = 0
            for h in states:
                for p in poolings:
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
                    slot += 1
            if progress is not None:
                progress(len(idx))
    parts = [p.finalize(*acc[slot]) for slot, p in zip(range(len(acc)), poolings * (len(acc) // len(poolings)))]
    return torch.cat(parts, dim=1).numpy().astype(np.float32)


def embed_texts(texts: list[str], tokenizer, model, cfg, progress=None, open_store=None, ids=None,
                encoded: list[list[int]] | None = None) -> tuple[np.ndarray, str]:
    """Essay embeddings ``(n, dim)`` float32 and the dtype used.

    Essays are length-sorted (longest first) and embedded ``cfg.shard_size`` at a time. With ``open_store``
    (dtype -> stack.shards.ShardStore, so the dtype is part of its key) finished shards are reused and new ones
    written; ``ids`` (n,) name the essays inside shards (default: their positions); ``encoded`` is
    ``encode(texts, tokenizer)`` when the caller already has it.
    """
    set_threads(cfg.threads)
    model.eval()
    encoded = encode(texts, tokenizer) if encoded is None else encoded
    ids = [str(i) for i in range(len(texts))] if ids is None else list(ids)
    sample = chunks_from_ids(encoded[:CHECK_ESSAYS], tokenizer, min(cfg.max_len, CHECK_LEN), 0, True)
    device = embed_device(cfg)
    run_model, dtype = choose_dtype(model, sample, cfg, device)
    store = open_store(dtype) if open_store is not None else None
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = None
    with heap_reuse():
        for k, rows in enumerate(shards(encoded, cfg.shard_size)):
            chunks = chunks_from_ids([encoded[i] for i in rows], tokenizer, cfg.max_len, cfg.stride, cfg.truncate)
            got = store.load(k, [ids[i] for i in rows]) if store is not None else None
            if got is None:
                got = _embed_chunks(run_model, chunks, cfg, pad, progress, device)
                if store is not None:
                    store.save(k, [ids[i] for i in rows], got)
            elif progress is not None:
                progress(len(chunks))
            if out is None:
                out = np.empty((len(texts), got.shape[1]), np.float32)
            out[rows] = got
    return out, dtype


def run_embed(name: str, params, overrides: list[str] | None = None) -> dict:
    """``stack embed NAME``: dispatch on the config's ``kind`` (backbone, tfidf, features) -> cache/<name>/."""
    from stack.member import get_runner, model_kind

    return get_runner(model_kind(name))(name, params, overrides)


def run_backbone(name: str, params, overrides: list[str] | None = None) -> dict:
    """Frozen backbone: embeddings + per-fold ridge OOF/test predictions -> cache/<name>/. Returns the CV."""
    import resource
    import time

    from tqdm.auto import tqdm

    from stack.backbones.loading import load_backbone
    from stack.config import load_model_config, sha256_json
    from stack.member import fit_and_write
    from stack.oof import ridge_head
    from stack.schema import ID
    from stack.shards import ShardStore
    from stack.stages import load_context

    cfg = load_model_config(name, overrides)
    for p in cfg.pooling:
        try:
            get_pooling(p)
        except ValueError as e:
            raise StackError(f"configs/models/{name}.yaml: {e}") from None
    check_dtype(cfg, embed_device(cfg))  # before loading weights: a typo fails in a second
    ctx = load_context(params)
    tokenizer, model = load_backbone(cfg)
    t0 = time.perf_counter()
    texts = ctx.train["full_text"].tolist() + ctx.test["full_text"].tolist()
    ids = ctx.train[ID].tolist() + ctx.test[ID].tolist()
    encoded = encode(texts, tokenizer)
    n_chunks = len(chunks_from_ids(encoded, tokenizer, cfg.max_len, cfg.stride, cfg.truncate))
    key = sha256_json([cfg.fingerprint(), ctx.data_fp, ids])

    def open_store(dtype):  # a resumed run re-checks bf16 and reuses only shards of the same dtype
        return ShardStore(name, f"{key}-{dtype}")

    with tqdm(total=n_chunks, desc=f"embed {name}", unit="chunk", mininterval=2) as bar:
        emb, dtype = embed_texts(texts, tokenizer, model, cfg, progress=bar.update, open_store=open_store, ids=ids,
                                 encoded=encoded)
    seconds = time.perf_counter() - t0
    n = len(ctx.train)
    result = fit_and_write(name, "backbone", cfg, ctx, ridge_head(cfg.head_alphas), emb[:n], emb[n:], emb[:n], emb[n:],
                           {"dtype": dtype})
    ShardStore(name, key).clear()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {**result, "seconds": seconds, "dtype": dtype, "essays": len(texts), "peak_rss_mb": rss_mb}

