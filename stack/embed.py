"""Frozen stage one: embed whole essays with a backbone, fit a ridge head per fold, write the cache.

Long essays are split into overlapping chunks of ``max_len`` tokens (``stride`` tokens shared); each token
is pooled once, so an essay's vector is the pooling of all its tokens. Chunks are length-sorted and padded
per batch; bf16 is used where the CPU supports it and matches fp32 on a sample.

    stack embed minilm                    # cache/minilm/{train,test}.parquet
    stack embed minilm --set pooling=[mean,max] --set layers=[-1,-2]
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass

import numpy as np
import torch

from stack.backbones.pooling import get_pooling
from stack.errors import StackError


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


def make_chunks(texts: list[str], tokenizer, max_len: int, stride: int, truncate: bool) -> list[Chunk]:
    cls_id = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    sep_id = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    specials = [t for t in (cls_id, sep_id) if t is not None]
    window = max_len - len(specials)
    encoded = tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    chunks = []
    for i, ids in enumerate(encoded):
        for piece, overlap in chunk_essay(ids, window, stride, truncate):
            head, tail = ([cls_id] if cls_id is not None else []), ([sep_id] if sep_id is not None else [])
            mask = [1] * len(head) + [0] * overlap + [1] * (len(piece) - overlap) + [1] * len(tail)
            chunks.append(Chunk(i, head + piece + tail, mask))
    return chunks


def _batches(chunks: list[Chunk], batch_size: int, pad_id: int):
    order = sorted(range(len(chunks)), key=lambda j: -len(chunks[j].ids))
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        width = max(len(chunks[j].ids) for j in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        attn = torch.zeros((len(idx), width), dtype=torch.long)
        pool = torch.zeros((len(idx), width), dtype=torch.long)
        for r, j in enumerate(idx):
            n = len(chunks[j].ids)
            ids[r, :n] = torch.tensor(chunks[j].ids)
            attn[r, :n] = 1
            pool[r, :n] = torch.tensor(chunks[j].pool_mask)
        yield idx, ids, attn, pool


def _layer_states(hidden_states, layers, layer_mode) -> list[torch.Tensor]:
    try:
        chosen = [hidden_states[i].float() for i in layers]
    except IndexError:
        raise StackError(f"layers {list(layers)} out of range: this backbone has {len(hidden_states)} hidden states (0 = embeddings)") from None
    if layer_mode == "concat":
        return chosen
    if layer_mode == "mean":
        return [torch.stack(chosen).mean(0)]
    raise StackError(f"unknown layer_mode {layer_mode!r} (valid: concat, mean)")


def bf16_supported() -> bool:
    return bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)())


def choose_dtype(model, sample, cfg, threshold: float = 0.999):
    """The model to run: a bf16 copy if allowed, supported and cosine > threshold vs fp32 on ``sample``."""
    if cfg.dtype == "fp32" or (cfg.dtype == "auto" and not bf16_supported()):
        return model, "fp32"
    if cfg.dtype not in ("auto", "bf16"):
        raise StackError(f"configs/models/{cfg.name}.yaml: dtype {cfg.dtype!r} is not one of auto, bf16, fp32")
    fast = copy.deepcopy(model).to(torch.bfloat16)
    if cfg.dtype == "bf16":
        return fast, "bf16"
    ref, got = _embed_chunks(model, sample, cfg), _embed_chunks(fast, sample, cfg)
    cos = torch.nn.functional.cosine_similarity(torch.from_numpy(ref), torch.from_numpy(got), dim=1).min().item()
    return (fast, "bf16") if cos > threshold else (model, "fp32")


def _embed_chunks(model, chunks: list[Chunk], cfg, pad_id: int = 0, progress=None) -> np.ndarray:
    """Pool every essay over all of its chunks -> float32 ``(n_essays, dim)``."""
    poolings = [get_pooling(p) for p in cfg.pooling]
    n_essays = max(c.essay for c in chunks) + 1
    acc: list[tuple] = []  # per (state, pooling): (stat (n, d), weight (n,))
    with torch.inference_mode():
        for idx, ids, attn, pool in _batches(chunks, cfg.batch_size, pad_id):
            out = model(input_ids=ids, attention_mask=attn, output_hidden_states=True)
            states = _layer_states(out.hidden_states, cfg.layers, cfg.layer_mode)
            essays = torch.tensor([chunks[j].essay for j in idx])
            slot = 0
            for h in states:
                for p in poolings:
                    stat, weight = p.stat(h, pool)
                    if len(acc) <= slot:
                        init = {"sum": 0.0, "max": float("-inf"), "min": float("inf")}[p.combine]
                        acc.append((torch.full((n_essays, stat.shape[1]), init), torch.zeros(n_essays)))
                    total, wsum = acc[slot]
                    if p.combine == "sum":
                        total.index_add_(0, essays, stat)
                    else:
                        total.index_reduce_(0, essays, stat, "amax" if p.combine == "max" else "amin")
                    wsum.index_add_(0, essays, weight)
                    slot += 1
            if progress is not None:
                progress(len(idx))
    parts, slot = [], 0
    for _ in range(len(acc) // len(poolings)):
        for p in poolings:
            parts.append(p.finalize(*acc[slot]))
            slot += 1
    return torch.cat(parts, dim=1).numpy().astype(np.float32)


def embed_texts(texts: list[str], tokenizer, model, cfg, progress=None) -> tuple[np.ndarray, str]:
    """Essay embeddings ``(n, dim)`` float32 and the dtype used."""
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    model.eval()
    chunks = make_chunks(texts, tokenizer, cfg.max_len, cfg.stride, cfg.truncate)
    sample_ids = sorted({c.essay for c in chunks})[:8]
    sample = [Chunk(sample_ids.index(c.essay), c.ids, c.pool_mask) for c in chunks if c.essay in sample_ids]
    run_model, dtype = choose_dtype(model, sample, cfg)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return _embed_chunks(run_model, chunks, cfg, pad, progress), dtype


def run_embed(name: str, params, overrides: list[str] | None = None) -> dict:
    """``stack embed NAME``: embeddings + per-fold ridge OOF/test predictions -> cache/<name>/. Returns the CV."""
    import dataclasses
    import json
    import time

    import pandas as pd
    from tqdm.auto import tqdm

    from stack import cache, paths
    from stack.backbones.loading import load_backbone
    from stack.config import load_model_config
    from stack.metrics import mcrmse
    from stack.oof import cross_fit, ridge_head
    from stack.schema import ID, PRED_COLS, emb_cols
    from stack.stages import load_context

    cfg = load_model_config(name, overrides)
    for p in cfg.pooling:
        try:
            get_pooling(p)
        except ValueError as e:
            raise StackError(f"configs/models/{name}.yaml: {e}") from None
    ctx = load_context(params)
    tokenizer, model = load_backbone(cfg)
    t0 = time.perf_counter()
    texts = ctx.train["full_text"].tolist() + ctx.test["full_text"].tolist()
    n_chunks = len(make_chunks(texts, tokenizer, cfg.max_len, cfg.stride, cfg.truncate))
    with tqdm(total=n_chunks, desc=f"embed {name}", unit="chunk", mininterval=2) as bar:
        emb, dtype = embed_texts(texts, tokenizer, model, cfg, progress=bar.update)
    seconds = time.perf_counter() - t0
    emb_train, emb_test = emb[: len(ctx.train)], emb[len(ctx.train) :]
    oof, test_pred, _ = cross_fit(ridge_head(cfg.head_alphas), emb_train, ctx.y, ctx.fold, emb_test)
    score, per_target = mcrmse(ctx.y, oof)

    cols = emb_cols(emb.shape[1])
    def frame(ids, preds, vectors):
        return pd.concat([pd.DataFrame({ID: ids}), pd.DataFrame(preds, columns=list(PRED_COLS)),
                          pd.DataFrame(vectors, columns=cols)], axis=1)

    meta = {
        "data": ctx.data_fp, "folds": ctx.folds_fp, "config": cfg.fingerprint(), "model": name,
        "version": __import__("stack").__version__, "kind": "embed", "config_json": dataclasses.asdict(cfg),
        "cv": {"mcrmse": score, "per_target": per_target}, "dtype": dtype,
    }
    cache.write_model(name, frame(ctx.train[ID], oof, emb_train), frame(ctx.test[ID], test_pred, emb_test), meta)
    (paths.model_cache(name) / "config.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    return {"mcrmse": score, "per_target": per_target, "seconds": seconds, "dtype": dtype, "essays": len(texts)}
