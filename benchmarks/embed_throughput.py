"""Throughput of frozen stage one: ``stack fit``'s embedding path vs the plain loop of the seed notebooks, side by side.

On the same essays (the first ``--n`` of train.csv) it times
  * plain: every essay padded/truncated to 512 tokens, file order, fp32, batch 8, mean of the last layer;
  * stack: ``stack.backbones.embedder.embed_texts`` with the member's config (whole essays in overlapping chunks, length-sorted,
    dynamic padding, inference_mode, bf16 when the CPU supports it and it matches fp32, packed weights, the CPU
    attention, glibc's heap kept) -- tokenisation and the bf16 check included;
  * stack on the plain loop's text (``truncate: true, max_len: 512``) and, with ``--ablate``, stack without one
    optimisation at a time, to show what each buys;
  * the ceiling: stack's own matmuls and attention alone (same kernels, same batch shapes, random tensors);
and the machine's matmul peak per dtype (the best of PyTorch's default GEMM and oneDNN's packed one, 2048^3).
Every path runs in a fresh process (nothing one path sets can help another) and the paths take turns for
``--rounds`` rounds, each round starting one path later, so a slower minute of a shared machine hits all of them;
the speed-up is the median of the per-round ratios, and also the ratio of each path's fastest run (timeit's
convention: interference only ever adds time). ``--all`` also embeds every essay (train + test) with the stack
path and reports its peak resident memory (README's figure for MPNet).

    nice -n 10 .venv/bin/python benchmarks/embed_throughput.py                          # MiniLM, 256 essays
    nice -n 10 .venv/bin/python benchmarks/embed_throughput.py --ablate
    nice -n 10 .venv/bin/python benchmarks/embed_throughput.py --model mpnet --n 64 --rounds 1
    nice -n 10 .venv/bin/python benchmarks/embed_throughput.py --model mpnet --all --rounds 0
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import resource
import statistics
import subprocess
import sys
import time

PATHS = {
    "plain": "plain loop (pad to 512, file order, batch 8, last layer)",
    "stack": "`stack fit` (whole essays)",
    "truncated": "`stack fit`, `truncate: true, max_len: 512` (the plain loop's text)",
    "no-pack": "`stack fit` without packed weights",
    "no-attention": "`stack fit` without the CPU attention (sdpa)",
    "no-heap": "`stack fit` without heap reuse",
    "fp32": "`stack fit` in fp32",
    "chunks-256": "`stack fit` with 256-token chunks, stride 32",
    "all-states": "`stack fit` reading every hidden state (every block runs)",
    "ceiling": "ceiling: `stack fit`'s matmuls + attention alone",
}
ABLATIONS = ["no-pack", "no-attention", "no-heap", "fp32", "chunks-256", "all-states"]


def gemm_peak(dtype, n: int = 2048, seconds: float = 1.5) -> float:
    """Best GFLOP/s of an ``(n, n) @ (n, n)`` in ``dtype``: PyTorch's default GEMM or oneDNN's packed one."""
    import torch

    from stack.backbones.packed import PackedLinear, packable

    a, w = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    kernels = [lambda: torch.nn.functional.linear(a, w)]
    if packable(dtype):
        lin = torch.nn.Linear(n, n, bias=False).to(dtype)
        lin.weight.data.copy_(w)
        packed = PackedLinear(lin, n)
        kernels.append(lambda: packed(a))
    best = 0.0
    with torch.inference_mode():
        for kernel in kernels:
            kernel()
            end = time.perf_counter() + seconds / len(kernels)
            while time.perf_counter() < end:
                t = time.perf_counter()
                kernel()
                best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def forward_flops(config, rows: int, width: int, blocks: int | None = None) -> float:
    """Forward FLOPs of one padded ``(rows, width)`` batch through ``blocks`` blocks (default: all): the encoder's
    matmuls + attention (no embeddings)."""
    d, f, layers = config.hidden_size, config.intermediate_size, blocks or config.num_hidden_layers
    per_token = layers * (2 * (4 * d * d + 2 * d * f) + 4 * width * d)
    return rows * width * per_token


def stack_batches(texts, tokenizer, cfg) -> list[list[int]]:
    """Chunk lengths of every batch ``stack fit`` runs on ``texts`` (longest first: ``[0]`` is the padded
    width), the same shards and length-sorted batches as ``embed_texts``."""
    from stack.backbones.chunks import batches as _batches
    from stack.backbones.chunks import chunks_from_ids, encode, shards

    encoded = encode(texts, tokenizer)
    batches = []
    for rows in shards(encoded, cfg.shard_size):
        chunks = chunks_from_ids([encoded[i] for i in rows], tokenizer, cfg.max_len, cfg.stride, cfg.truncate)
        batches += [[len(chunks[j].tokens) for j in idx] for idx, *_ in _batches(chunks, cfg.batch_size, 0)]
    return batches


def plain_loop(texts, tokenizer, model, batch: int = 8, max_len: int = 512):
    """The seed notebooks' loop -> (embeddings (n, d), batches as lists of padded lengths)."""
    import numpy as np
    import torch

    out, batches = [], []
    with torch.no_grad():
        for s in range(0, len(texts), batch):
            enc = tokenizer(texts[s : s + batch], padding="max_length", truncation=True, max_length=max_len,
                            return_tensors="pt")
            h = model(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).float()
            out.append(((h * m).sum(1) / m.sum(1)).numpy())
            batches.append([max_len] * len(enc["input_ids"]))
    return np.concatenate(out), batches


def ceiling(model, batches, dtype) -> float:
    """Seconds that only the encoder's matmuls (packed, as stack runs them) and attention (stack's) take on
    ``batches``, on random tensors: no embeddings, LayerNorm, GELU, residuals, masks or pooling."""
    import torch

    from stack.backbones.attention import cpu_attention
    from stack.backbones.packed import PackedLinear, packable

    c = model.config
    d, f, heads, layers = c.hidden_size, c.intermediate_size, c.num_attention_heads, c.num_hidden_layers

    def linear(n_in, n_out):
        lin = torch.nn.Linear(n_in, n_out).to(dtype)
        return PackedLinear(lin, 2048) if packable(dtype) else lin

    qkvo, up, down = linear(d, d), linear(d, f), linear(f, d)
    module = torch.nn.Module().eval()
    total = 0.0
    with torch.inference_mode():
        for lengths in batches:
            rows, width = len(lengths), lengths[0]
            x, h = torch.randn(rows, width, d).to(dtype), torch.randn(rows, width, f).to(dtype)
            q = torch.randn(rows, width, heads, d // heads).to(dtype).transpose(1, 2)
            ops = [lambda x=x: qkvo(x)] * 4 + [lambda x=x: up(x), lambda h=h: down(h),
                                               lambda q=q: cpu_attention(module, q, q, q, None)]
            for op in ops:
                op()  # warm this shape
            t = time.perf_counter()
            for op in ops:
                op()
            total += layers * (time.perf_counter() - t)
    return total


@contextlib.contextmanager
def without(path: str):
    """Switch one optimisation of the stack path off (for --ablate)."""
    from stack import runtime
    from stack.backbones import embedder

    saved = {k: getattr(embedder, k) for k in ("pack_linears", "use_cpu_attention")}
    heap = runtime.heap_reuse
    if path == "no-pack":
        embedder.pack_linears = lambda model, rows: 0
    elif path == "no-attention":
        embedder.use_cpu_attention = lambda model: False
    elif path == "no-heap":
        runtime.heap_reuse = contextlib.nullcontext
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(embedder, k, v)
        runtime.heap_reuse = heap


def worker(path: str, model_name: str, n: int) -> dict:
    """Run one path in this (fresh) process -> its timing as a dict."""
    import pandas as pd
    import torch

    from stack.backbones.depth import blocks_run
    from stack.backbones.embedder import embed_texts, states
    from stack.backbones.loading import load_backbone
    from stack.members import load_member
    from stack.runtime import set_threads

    threads = set_threads(0)
    spec = load_member(model_name)
    cfg = spec.cfg
    tokenizer, model = load_backbone(spec.backbone)
    model.eval()
    texts = pd.read_csv("data/fb3/train.csv")["full_text"].iloc[:n].tolist()
    if path == "peak":
        return {"fp32": gemm_peak(torch.float32), "bf16": gemm_peak(torch.bfloat16), "threads": threads}
    if path == "all":
        test = pd.read_csv("data/fb3/test.csv")["full_text"].tolist()
        every = pd.read_csv("data/fb3/train.csv")["full_text"].tolist() + test
        t = time.perf_counter()
        _, dtype = embed_texts(every, tokenizer, model, cfg)
        return {"seconds": time.perf_counter() - t, "essays": len(every), "dtype": dtype,
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if path == "plain":
        plain_loop(texts[:16], tokenizer, model)  # warm-up
        t = time.perf_counter()
        _, batches = plain_loop(texts, tokenizer, model)
        seconds, dtype = time.perf_counter() - t, "fp32"
    else:
        run_cfg = {"truncated": dataclasses.replace(cfg, truncate=True, max_len=512),
                   "fp32": dataclasses.replace(cfg, precision="fp32"),
                   "chunks-256": dataclasses.replace(cfg, max_len=256, stride=32),
                   "all-states": dataclasses.replace(cfg, layers=())}.get(path, cfg)
        with without(path):
            _, dtype = embed_texts(texts[:16], tokenizer, model, run_cfg)  # warm-up
            if path != "ceiling":
                t = time.perf_counter()
                _, dtype = embed_texts(texts, tokenizer, model, run_cfg)
                seconds = time.perf_counter() - t
        batches = stack_batches(texts, tokenizer, run_cfg)
        if path == "ceiling":
            seconds = ceiling(model, batches, {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype])
    n = model.config.num_hidden_layers
    blocks = n if path == "plain" else blocks_run(n, max(states(run_cfg, model)))
    flops = sum(forward_flops(model.config, len(b), b[0], blocks) for b in batches)
    return {"seconds": seconds, "dtype": dtype, "flops": flops, "chunks": sum(map(len, batches)),
            "tokens": sum(map(sum, batches))}


def run_worker(path: str, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", path, "--model", args.model, "--n", str(args.n)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"worker {path} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--n", type=int, default=256, help="essays (the first n of train.csv)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds in which every path runs once (0: none)")
    ap.add_argument("--ablate", action="store_true", help="also time stack without each optimisation")
    ap.add_argument("--all", action="store_true", help="also embed every essay with the stack path; peak RSS")
    ap.add_argument("--paths", default="", help="only these paths (comma-separated; the plain loop always runs)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.model, args.n)))
        return

    peak = run_worker("peak", args)
    print(f"model {args.model}, first {args.n} essays, {peak['threads']} threads, {args.rounds} rounds; "
          f"GEMM peak fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s")
    paths = (["plain", "stack", "truncated", *(ABLATIONS if args.ablate else []), "ceiling"] if not args.paths
             else ["plain", *args.paths.split(",")])
    runs: dict[str, list[dict]] = {p: [] for p in paths}
    for r in range(args.rounds):
        for p in paths[r % len(paths):] + paths[: r % len(paths)]:  # each round starts one path later
            runs[p].append(run_worker(p, args))
        print(f"round {r + 1}: " + ", ".join(f"{p} {runs[p][-1]['seconds']:.2f}s" for p in paths), flush=True)
    if args.rounds:
        print("\n| path | dtype | essays/s | speed-up over the plain loop | best / best | GFLOP/s "
              "| % of its dtype's GEMM peak | tokens |")
        print("|---|---|---|---|---|---|---|---|")
        for p in paths:
            last = runs[p][-1]
            secs = statistics.median(x["seconds"] for x in runs[p])
            ratios = [pl["seconds"] / x["seconds"] for pl, x in zip(runs["plain"], runs[p])]
            spread = f" ({min(ratios):.2f}-{max(ratios):.2f})" if len(ratios) > 1 else ""
            best = min(x["seconds"] for x in runs["plain"]) / min(x["seconds"] for x in runs[p])
            gflops = last["flops"] / secs / 1e9
            print(f"| {PATHS[p]} | {last['dtype']} | {args.n / secs:.2f} | {statistics.median(ratios):.2f}x{spread} | "
                  f"{best:.2f}x | {gflops:.0f} | {100 * gflops / peak[last['dtype']]:.0f}% | {last['tokens']:,} |")
        print("\nessays/s: median over rounds; speed-up: median (min-max) of the per-round ratios; best / best: the "
              "plain loop's fastest run over this path's fastest (timeit's estimate: interference only ever adds "
              "time); GFLOP/s: the encoder's matmul + attention FLOPs of the padded batches")
    if args.all:
        got = run_worker("all", args)
        print(f"\nall {got['essays']} essays ({got['dtype']}): {got['seconds']:.0f} s, "
              f"peak RSS {got['peak_rss_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
