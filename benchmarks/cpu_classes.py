"""`make run`'s minutes by CPU class: measured on this machine for its own class, derived for the others from their
matmul rates. The default run's encoder work (FLOPs of the blocks its frozen member runs, over every chunk of
every essay) is divided by each class's matmul rate times the share of its matmul rate this machine's own
embedding reached in a measured `make run`; the rest of the run (heads, blend, report: not the encoder's matmuls)
is taken as measured here.

A class's rate is measured here in a fresh process with oneDNN and ATen held to its instructions (AVX2: fp32, no
native bf16; AVX-512 without AMX: fp32, its bf16 being emulated on most such CPUs, so ``auto`` picks fp32; AMX:
bf16) where this CPU has them; a class above this CPU's is derived only from a rate given with ``--rate``
(measured on another machine, e.g. by benchmarks/embed_throughput.py's GEMM peak line) and says so, and a whole
run measured on another machine is shown with ``--measured``.

    .venv/bin/python benchmarks/cpu_classes.py --embed-minutes 45.1 --rest-minutes 9.0 \\
        --rate "AVX2 (71 GFLOP/s)=71" --measured "AMX / AVX-512 BF16=16.3"
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

CLASSES = {"AVX2": ("AVX2", "avx2", "fp32"), "AVX-512 (no AMX)": ("AVX512_CORE", "avx512", "fp32"),
           "AMX / AVX-512 BF16": ("AVX512_CORE_AMX", "avx512", "bf16")}
RATE = ("from stack import runtime; from stack.backbones.estimate import gemm_rate; runtime.set_threads(0); "
        "print(gemm_rate('{prec}'))")


def native_class() -> str:
    """This CPU's class, from the flags the kernel reports."""
    flags = set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                flags.update(line.split(":", 1)[1].split())
                break
    if "amx_bf16" in flags:
        return "AMX / AVX-512 BF16"
    return "AVX-512 (no AMX)" if "avx512f" in flags else "AVX2"


def rate(isa: str, aten: str, prec: str) -> float:
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": isa, "ATEN_CPU_CAPABILITY": aten}
    best = 0.0
    for _ in range(3):  # the best of three fresh processes: interference only ever slows one down
        out = subprocess.run([sys.executable, "-c", RATE.format(prec=prec)], env=env, capture_output=True, text=True,
                             check=True)
        best = max(best, float(out.stdout.strip().splitlines()[-1]))
    return best


def default_run_flops() -> tuple[float, int, int]:
    """Encoder FLOPs of the default run's frozen member over train + test, its chunks and blocks run."""
    import pandas as pd

    from stack.backbones.chunks import chunk_lengths, encode
    from stack.backbones.depth import blocks_run
    from stack.backbones.embedder import states
    from stack.backbones.estimate import encoder_flops
    from stack.backbones.loading import load_backbone
    from stack.config import load_params
    from stack.members.registry import load_member
    from stack.task import load_task

    params, spec = load_params(), load_member("mpnet")
    texts = pd.concat([pd.read_csv(params.data.train), pd.read_csv(params.data.test)])[load_task(params).text].tolist()
    tokenizer, model = load_backbone(spec.backbone)
    lengths = chunk_lengths(encode(texts, tokenizer), tokenizer, spec.cfg.max_len, spec.cfg.stride, spec.cfg.truncate)
    blocks = blocks_run(model.config.num_hidden_layers, max(states(spec.cfg, model, "mpnet")))
    return encoder_flops(model.config, blocks, lengths), len(lengths), blocks


def pairs(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        name, _, value = item.rpartition("=")
        out[name] = float(value)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--embed-minutes", type=float, required=True, help="fit@mpnet's embedding here, measured")
    ap.add_argument("--rest-minutes", type=float, required=True, help="the rest of `make run` here, measured")
    ap.add_argument("--rate", action="append", default=[], metavar="CLASS=GFLOPS",
                    help="a class's matmul rate measured elsewhere (a new name adds a row in fp32)")
    ap.add_argument("--measured", action="append", default=[], metavar="CLASS=MINUTES",
                    help="a whole `make run` measured on a CPU of that class")
    args = ap.parse_args()
    here = native_class()
    order = list(CLASSES)
    flops, chunks, blocks = default_run_flops()
    rates, source = {}, {}
    for name, (isa, aten, prec) in CLASSES.items():
        if order.index(name) <= order.index(here):
            rates[name], source[name] = rate(isa, aten, prec), "measured here"
    for name, gflops in pairs(args.rate).items():
        rates[name], source[name] = gflops * 1e9, "given (measured elsewhere)"
    share = flops / (args.embed_minutes * 60) / rates[here]
    print(f"this CPU: {here}; default run: {chunks:,} chunks through {blocks} blocks = {flops / 1e12:.1f} TFLOP; "
          f"its measured embedding ({args.embed_minutes} min) reached {share:.0%} of its matmul rate; the rest of "
          f"the run: {args.rest_minutes} min here\n")
    print("| CPU class (2 cores) | precision | matmul rate (GFLOP/s) | rate from | embedding (min) | `make run` (min) |")
    print("|---|---|---|---|---|---|")
    measured = pairs(args.measured)
    for name in list(CLASSES) + [n for n in rates if n not in CLASSES]:
        prec, src = CLASSES.get(name, ("", "", "fp32"))[2], source.get(name, "not on this CPU: pass --rate")
        gflops = f"{rates[name] / 1e9:,.0f}" if name in rates else ""
        if name in measured:
            embed, run = "", f"{measured[name]:,.1f} (measured on such a CPU)"
        elif name in rates:
            how = "measured" if name == here else "derived"
            minutes = args.embed_minutes if name == here else flops / (rates[name] * share) / 60
            embed, run = f"{minutes:,.0f} ({how})", f"{minutes + args.rest_minutes:,.0f} ({how})"
        else:
            embed = run = ""
        print(f"| {name} | {prec} | {gflops} | {src} | {embed} | {run} |")

if __name__ == "__main__":
    main()
