"""How long embedding will take, said before it starts: the encoder's FLOPs over the chunks it will run (only
the blocks the member reads: stack.backbones.depth), divided by this machine's measured matmul rate times the
share of it a whole forward pass reaches.

    estimate("fit@mpnet", n_essays, chunk_lengths, model, cfg, where)   # one line when it is over a minute
    encoder_flops(model.config, blocks=9, lengths=[512, 300])           # what benchmarks/cpu_classes.py divides
"""

from __future__ import annotations

import functools

import numpy as np

from stack import runtime
from stack.backbones.depth import blocks_run
from stack.backbones.embedder import states


@functools.cache
def gemm_rate(prec: str, device_type: str = "cpu") -> float:
    """This machine's matmul rate in ``prec`` (FLOP/s): the best of eight 1024^3 matmuls after a warm-up, in
    this process's threads (measured once per process: about 0.1 s with AMX, 0.3 s on a 2-core AVX2 CPU)."""
    import time

    import torch

    dev = torch.device(device_type)
    a = torch.randn(1024, 1024, device=dev).to(runtime.torch_dtype(prec))
    best = float("inf")
    for i in range(9):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ a
        if dev.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0) if i else best  # the first is the warm-up
    return 2 * 1024**3 / best


EFFICIENCY = 0.55  # share of the matmul rate an encoder's whole forward pass reaches (docs/speed.md: 59-75%)


def seconds_for(flops: float, prec: str, dev) -> float:
    """Seconds for ``flops`` of encoder work in ``prec`` on ``dev``."""
    return flops / (gemm_rate(prec, dev.type) * EFFICIENCY)


def duration(seconds: float) -> str:
    """``seconds`` as people say it: 40 s, 7 min, 3.5 h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def encoder_flops(config, blocks: int, lengths: list[int]) -> float:
    """Forward FLOPs of ``blocks`` transformer blocks over chunks of ``lengths`` tokens: per token and block the
    four attention projections and the feed-forward pair (2 * (4 d^2 + 2 d f)), plus the attention itself
    (4 t d per token for a t-token chunk)."""
    d, f = config.hidden_size, getattr(config, "intermediate_size", 4 * config.hidden_size)
    tokens = np.asarray(lengths, np.float64)
    return float(blocks * (2 * (4 * d * d + 2 * d * f) * tokens.sum() + 4 * d * (tokens**2).sum()))


def estimate(stage: str, n_essays: int, lengths: list[int], model, cfg, where: str, precision: str | None = None,
             say=None, longer_than: float = 60.0) -> float:
    """One line before a long embedding starts: how many essays, and about how long on this machine (from the
    blocks that will run, the chunks' lengths and this machine's measured matmul rate; ``seconds_for``).
    Said only when it is over ``longer_than`` seconds; -> the estimate in seconds."""
    blocks = model.config.num_hidden_layers
    run = blocks_run(blocks, max(states(cfg, model, where)))
    dev = runtime.device(cfg.device, where)
    prec = precision or runtime.precision(cfg.precision, dev, where)
    seconds = seconds_for(encoder_flops(model.config, run, lengths), prec, dev)
    if seconds > longer_than:
        runtime.say(f"{stage}: {n_essays:,} essays ({len(lengths):,} chunks, {run} of "
                    f"{blocks} blocks), about {duration(seconds)} on this {dev.type.upper()} "
                    f"({runtime.describe(prec, dev)}); debug: true checks a configuration in a minute", say)
    return seconds
