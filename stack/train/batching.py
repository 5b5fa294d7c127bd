"""Essays -> token ids -> padded batches: paragraph handling, length-bucketed batches, dynamic padding.

Training batches are drawn from shuffled groups of ``bucket_batches`` batches sorted by length, so each batch
holds essays of similar length (little padding) while the order stays random. Each batch is padded only to
its longest essay.

    texts = prepare_texts(df.full_text, "token", "[BR]")
    ids = encode(texts, tokenizer, max_len=512)            # list of (n_i,) token-id lists
    for idx in train_batches([len(x) for x in ids], 8, 32, rng):
        input_ids, mask = collate(ids, idx, tokenizer.pad_token_id)   # (b, t), (b, t)
"""

from __future__ import annotations

import re

import numpy as np
import torch

_BREAK = re.compile(r"[ \t]*(?:\r?\n[ \t]*)+")


def prepare_texts(texts, paragraph: str, token: str = "[BR]") -> list[str]:
    """keep: as written | strip: every run of line breaks -> one space | token: -> `` token ``."""
    texts = [str(t).strip() for t in texts]
    if paragraph == "keep":
        return texts
    if paragraph == "strip":
        return [_BREAK.sub(" ", t) for t in texts]
    if paragraph == "token":
        return [_BREAK.sub(f" {token} ", t) for t in texts]
    raise ValueError(f"unknown paragraph mode {paragraph!r} (valid: keep, strip, token)")


def encode(texts: list[str], tokenizer, max_len: int) -> list[list[int]]:
    """Token ids with special tokens, truncated to ``max_len``."""
    return tokenizer(list(texts), truncation=True, max_length=max_len, add_special_tokens=True,
                     verbose=False)["input_ids"]


def train_batches(lengths, batch_size: int, bucket_batches: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Row indices of each training batch: a random epoch order, length-sorted inside buckets."""
    order = rng.permutation(len(lengths))
    if bucket_batches <= 0:
        return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    lengths = np.asarray(lengths)
    batches = []
    group = batch_size * bucket_batches
    for s in range(0, len(order), group):
        chunk = order[s : s + group]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches += [chunk[b : b + batch_size] for b in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def eval_batches(lengths, batch_size: int) -> list[np.ndarray]:
    """Row indices of prediction batches, longest first (the first batch shows the peak memory)."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]


def collate(encoded: list[list[int]], idx, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad the essays ``idx`` to the longest of them -> (input_ids ``(b, t)``, attention_mask ``(b, t)``)."""
    width = max(len(encoded[i]) for i in idx)
    ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(idx), width), dtype=torch.long)
    for r, i in enumerate(idx):
        n = len(encoded[i])
        ids[r, :n] = torch.tensor(encoded[i])
        mask[r, :n] = 1
    return ids, mask
