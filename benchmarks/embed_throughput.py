"""Throughput of frozen stage one: ``stack embed``'s path vs the plain loop of the seed notebooks, in one run.

On the same essays (the first ``--n`` of train.csv), times
  * plain: every essay padded/truncated to 512 tokens, file order, fp32, batch 8, mean of the last layer;
  * stack: ``stack.embed.embed_texts`` with the model's config (whole essays in overlapping chunks,
    length-sorted, dynamic padding, inference_mode, bf16 when the CPU supports it and it matches fp32),
and the machine's bf16/fp32 matmul peak measured in the same run, so each path's achieved GFLOP/s can be put
against the peak of the dtype it ran in. ``--all`` also embeds every essay (train + test) with the stack path
and reports the peak resident memory (the figure README quotes for MPNet).

    nice -n 10 .venv/bin/python benchmarks/embed_throughput.py                   # MiniLM, 256 essays
    nice -n 10 .venv/bin/python benchmarks/embed_throughput.py --model mpnet --n 64
    nice -n 10 .venv/bin/python benchmarks/embed_throughput.py --model mpnet --all --skip-plain
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import time

import numpy as np
import pandas as pd
import torch

from stack.backbones.loading import load_backbone
from stack.config import load_model_config
from stack.embed import chunks_from_ids, embed_texts, encode, set_threads


def matmul_peak(dtype: torch.dtype, n: int = 1024, seconds: float = 2.0) -> float:
    """Measured GFLOP/s of ``(n, n) @ (n, n)`` in ``dtype`` (best of repeated timings)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    for _ in range(3):
        a @ b
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        for _ in range(4):
            a @ b
        best = max(best, 4 * 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def forward_flops(model, batch: int, width: int) -> float:
    """Approximate forward FLOPs of one ``(batch, width)`` batch: 2 x non-embedding params per token + attention."""
    cfg = model.config
    params = sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n)
    attention = 4 * cfg.num_hidden_layers * width * cfg.hidden_size  # QK^T and AV, per token
    return batch * width * (2 * params + attention)


def stack_batches(texts, tokenizer, cfg) -> list[list[int]]:
    """Chunk lengths of every batch ``stack embed`` runs on ``texts`` (longest first, so ``[0]`` is the padded
    width): the same shards and length-sorted batches as ``embed_texts``."""
    encoded = encode(texts, tokenizer)
    order = sorted(range(len(texts)), key=lambda i: (-len(encoded[i]), i))
    batches = []
    for s in range(0, len(order), cfg.shard_size):
        chunks = chunks_from_ids([encoded[i] for i in order[s : s + cfg.shard_size]], tokenizer, cfg.max_len, cfg.stride, cfg.truncate)
        lengths = sorted((len(c.ids) for c in chunks), reverse=True)
        batches += [lengths[b : b + cfg.batch_size] for b in range(0, len(lengths), cfg.batch_size)]
    return batches


def compute_floor(model, batches, dtype: torch.dtype) -> float:
    """Seconds the encoder's matmuls and attention alone take on ``batches`` (see stack_batches) in ``dtype``.

    Per layer: the q, k, v, output, up and down projections as ``F.linear`` on random tensors of the real shapes
    and ``scaled_dot_product_attention`` with the real heads: no embeddings, LayerNorm, GELU, residuals, masks or
    pooling. With this PyTorch build's kernels no implementation of the same FLOPs beats it, so
    ``len(texts) / compute_floor`` is the ceiling of essays/s, against which the 4x target can be checked."""
    cfg = model.config
    d, f, heads, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads, cfg.num_hidden_layers
    w = {k: torch.randn(n, m).to(dtype) for k, (n, m) in {"qkvo": (d, d), "up": (f, d), "down": (d, f)}.items()}
    total = 0.0
    with torch.inference_mode():
        for lengths in batches:
            rows, width = len(lengths), lengths[0]
            x, h = torch.randn(rows * width, d).to(dtype), torch.randn(rows * width, f).to(dtype)
            q = torch.randn(rows, heads, width, d // heads).to(dtype)
            ops = [lambda: torch.nn.functional.linear(x, w["qkvo"])] * 4 + [
                lambda: torch.nn.functional.linear(x, w["up"]), lambda: torch.nn.functional.linear(h, w["down"]),
                lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q)]
            for op in ops:
                op()  # warm the kernel for this shape
            t = time.perf_counter()
            for op in ops:
                op()
            total += layers * (time.perf_counter() - t)
    return total


def plain_loop(texts, tokenizer, model, batch: int = 8, max_len: int = 512):
    """The seed notebooks' loop -> (embeddings (n, d), seconds, FLOPs)."""
    out, flops = [], 0.0
    t = time.perf_counter()
    with torch.no_grad():
        for s in range(0, len(texts), batch):
            enc = tokenizer(texts[s : s + batch], padding="max_length", truncation=True, max_length=max_len, return_tensors="pt")
            h = model(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).float()
            out.append(((h * m).sum(1) / m.sum(1)).numpy())
            flops += forward_flops(model, *enc["input_ids"].shape)
    return np.concatenate(out), time.perf_counter() - t, flops


def stack_path(texts, tokenizer, model, cfg):
    """``stack embed``'s path -> (embeddings, dtype, seconds, FLOPs of its padded batches, chunks, tokens, batches)."""
    t = time.perf_counter()
    emb, dtype = embed_texts(texts, tokenizer, model, cfg)
    seconds = time.perf_counter() - t
    batches = stack_batches(texts, tokenizer, cfg)
    flops = sum(forward_flops(model, len(lengths), lengths[0]) for lengths in batches)
    return emb, dtype, seconds, flops, sum(map(len, batches)), sum(map(sum, batches)), batches


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--n", type=int, default=256, help="essays (the first n of train.csv)")
    ap.add_argument("--skip-plain", action="store_true", help="only the stack path")
    ap.add_argument("--all", action="store_true", help="also embed every essay with the stack path; report peak RSS")
    args = ap.parse_args()

    threads = set_threads(0)
    cfg = load_model_config(args.model)
    tokenizer, model = load_backbone(cfg)
    model.eval()
    train = pd.read_csv("data/fb3/train.csv")
    texts = train["full_text"].iloc[: args.n].tolist()
    peak = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    print(f"model {args.model}, {len(texts)} essays, {threads} threads; matmul peak fp32 {peak['fp32']:.0f} GFLOP/s, "
          f"bf16 {peak['bf16']:.0f} GFLOP/s")

    rows = []
    emb, dtype, sec, flops, n_chunks, n_tokens, batches = stack_path(texts, tokenizer, model, cfg)
    rows.append(("stack embed", dtype, sec, flops, f"whole essays: {n_chunks} chunks, {n_tokens} tokens"))
    # the same text the plain loop sees (its first 512 tokens): what batching + dtype alone buy
    same = dataclasses.replace(cfg, truncate=True, max_len=512)
    _, tdtype, tsec, tflops, _, t_tokens, _ = stack_path(texts, tokenizer, model, same)
    rows.append(("stack embed, truncate: true, max_len: 512", tdtype, tsec, tflops, f"first 512 tokens: {t_tokens} tokens"))
    if not args.skip_plain:
        ref, psec, pflops = plain_loop(texts, tokenizer, model)
        rows.append(("plain loop", "fp32", psec, pflops, f"first 512 tokens, padded to 512: {len(texts) * 512} tokens"))
    dt = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    floor = compute_floor(model, batches, dt)
    rows.append(("ceiling: matmuls + attention only, same batches", dtype, floor, flops, "no other op, nothing else"))
    print("\n| path | dtype | essays/s | GFLOP/s | % of matmul peak | tokens |\n|---|---|---|---|---|---|")
    for name, dt, s, f, note in rows:
        print(f"| {name} | {dt} | {len(texts) / s:.2f} | {f / s / 1e9:.0f} | {100 * f / s / 1e9 / peak[dt]:.0f}% | {note} |")
    if not args.skip_plain:
        print(f"\nspeed-up over the plain loop (essays/s, same {len(texts)} essays): whole essays {psec / sec:.2f}x, "
              f"truncated like the plain loop {psec / tsec:.2f}x; ceiling of whole essays (matmuls + attention alone) "
              f"{psec / floor:.2f}x")

    if args.all:
        test = pd.read_csv("data/fb3/test.csv")
        every = train["full_text"].tolist() + test["full_text"].tolist()
        t = time.perf_counter()
        embed_texts(every, tokenizer, model, cfg)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"\nall {len(every)} essays: {time.perf_counter() - t:.0f}s, peak RSS {rss:.0f} MiB")


if __name__ == "__main__":
    main()
