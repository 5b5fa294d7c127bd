"""Whole essays as overlapping chunks of token ids, sorted into shards and padded batches for frozen inference.

Long essays are split into chunks of ``max_len`` tokens (specials included) sharing ``stride`` tokens with the
previous chunk; each token is pooled once (``Chunk.pool_mask`` is 0 on the shared tokens), so an essay's vector
is the pooling of all its tokens. Essays are length-sorted into shards (memory bound, resume granularity) and
each shard's chunks into length-sorted batches padded to their longest chunk.

    encoded = encode(texts, tokenizer)                                # token ids, no specials
    chunks = chunks_from_ids(encoded, tokenizer, max_len=512, stride=64, truncate=False)
    for idx, ids, attn, pool in batches(chunks, batch_size=16, pad_id=0): ...
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stack.errors import StackError


@dataclass
class Chunk:
    essay: int
    tokens: list[int]  # token ids, specials included
    pool_mask: list[int]  # 0 on tokens already pooled in the previous chunk (the overlap), else 1


def chunk_essay(tokens: list[int], window: int, stride: int, truncate: bool) -> list[tuple[list[int], int]]:
    """Split token ids (no specials) into windows; -> [(tokens, n_overlap_with_previous)]."""
    if truncate or len(tokens) <= window:
        return [(tokens[:window], 0)]
    if not 0 <= stride < window:
        raise StackError(f"stride must be in [0, max_len - specials), got {stride} for a {window}-token window")
    step = window - stride
    out, start, prev_end = [], 0, 0
    while True:
        end = min(start + window, len(tokens))
        out.append((tokens[start:end], max(prev_end - start, 0)))
        if end == len(tokens):
            return out
        prev_end, start = end, start + step


def encode(texts: list[str], tokenizer) -> list[list[int]]:
    """Token ids of each text, no special tokens, no truncation."""
    return tokenizer(list(texts), add_special_tokens=False, truncation=False, verbose=False)["input_ids"]


def specials(tokenizer) -> tuple[list[int], list[int]]:
    """The ids a chunk starts and ends with: CLS/SEP, else BOS/EOS, else none."""
    cls_id = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    sep_id = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    return ([cls_id] if cls_id is not None else []), ([sep_id] if sep_id is not None else [])


def chunks_from_ids(encoded: list[list[int]], tokenizer, max_len: int, stride: int, truncate: bool) -> list[Chunk]:
    """Chunks (with CLS/SEP or BOS/EOS added) of every essay; ``Chunk.essay`` indexes ``encoded``."""
    head, tail = specials(tokenizer)
    window = max_len - len(head) - len(tail)
    chunks = []
    for i, tokens in enumerate(encoded):
        for piece, overlap in chunk_essay(tokens, window, stride, truncate):
            mask = [1] * len(head) + [0] * overlap + [1] * (len(piece) - overlap) + [1] * len(tail)
            chunks.append(Chunk(i, head + piece + tail, mask))
    return chunks


def chunk_lengths(encoded: list[list[int]], tokenizer, max_len: int, stride: int, truncate: bool) -> list[int]:
    """The length (specials included) of every chunk the essays become: what the encoder will be asked to run."""
    head, tail = specials(tokenizer)
    window = max_len - len(head) - len(tail)
    return [len(piece) + len(head) + len(tail) for tokens in encoded
            for piece, _ in chunk_essay(tokens, window, stride, truncate)]


def shards(encoded: list[list[int]], size: int) -> list[list[int]]:
    """Essay positions, longest first (ties in input order), ``size`` per shard."""
    order = sorted(range(len(encoded)), key=lambda i: (-len(encoded[i]), i))
    size = max(1, size)
    return [order[s : s + size] for s in range(0, len(order), size)]


def batches(chunks: list[Chunk], batch_size: int, pad_id: int):
    """Length-sorted batches, each padded to its longest chunk -> (chunk indices, ids, attention mask, pool mask)."""
    order = sorted(range(len(chunks)), key=lambda j: -len(chunks[j].tokens))
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        width = len(chunks[idx[0]].tokens)
        gaps = [width - len(chunks[j].tokens) for j in idx]
        ids = torch.tensor([chunks[j].tokens + [pad_id] * g for j, g in zip(idx, gaps)], dtype=torch.long)
        attn = torch.tensor([[1] * (width - g) + [0] * g for g in gaps], dtype=torch.long)
        pool = torch.tensor([chunks[j].pool_mask + [0] * g for j, g in zip(idx, gaps)], dtype=torch.long)
        yield idx, ids, attn, pool
