"""The default run's bundle: its size, the time to load it, and the time to score 1, 100 and 2,571 essays, beside
the rate at which `stack fit`'s embedding path embeds the same essays with the bundle's frozen member (the
pipeline's embedding rate: scoring can only be slower, by the heads and statistics it adds).

Each measurement runs in a fresh process (cold start, as in a Kaggle notebook), with the bundle and nothing else:
the working directory is a temporary folder, HF_HUB_OFFLINE=1. The essays are the first N of data/fb3/train.csv
(2,571 is the size of FB3's hidden test set). Prints one markdown table; no timed assertions anywhere.

    stack export bundle/                         # after `make run`
    .venv/bin/python benchmarks/bundle.py --bundle bundle/ [--sizes 1,100,2571] [--threads 2] [--rounds 3]

With ``--rounds`` R, each size runs R times, scoring and embedding taking turns (a slow minute of a shared machine
hits both); the table shows medians, and the ratio is the median of the per-round ratios with its range.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKER = """
import json, sys, time
t0 = time.perf_counter()
import pandas as pd
from stack import Scorer
t1 = time.perf_counter()
scorer = Scorer.load(sys.argv[1])
t2 = time.perf_counter()
n = int(sys.argv[3])
essays = pd.read_csv(sys.argv[2]).iloc[:n][["text_id", "full_text"]]
out = scorer.score(essays) if n else None
t3 = time.perf_counter()
import resource
print(json.dumps({"import": t1 - t0, "load": t2 - t1, "score": t3 - t2, "rows": 0 if out is None else len(out),
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""
EMBED = """
import json, sys, time
from pathlib import Path
import pandas as pd
from stack.members.run import load_scorer
from stack.members import KINDS
from stack.members.registry import spec_from_json
from stack.members.run import read_member_json
folder = Path(sys.argv[1]) / "members" / "mpnet"
meta = read_member_json(folder)
spec = spec_from_json(meta["config_json"], folder, "member.json", strict=True)
kind = KINDS["frozen"]
texts = pd.read_csv(sys.argv[2])["full_text"].iloc[:int(sys.argv[3])].tolist()
t0 = time.perf_counter()  # from here on, what scoring's first member does too: load the backbone, embed
loaded = kind._load(spec, strict=True)
kind._embed(spec, texts, loaded, meta.get("precision"))
print(json.dumps({"embed": time.perf_counter() - t0}))
"""


def run(bundle: Path, n: int, threads: int, code: str = WORKER) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryDirectory() as cwd:
        done = subprocess.run([sys.executable, "-c", code, str(bundle.resolve()), str(ROOT / "data/fb3/train.csv"),
                               str(n)], cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"scoring {n} essays failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=ROOT / "bundle")
    ap.add_argument("--sizes", default="1,100,2571")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    manifest = json.loads((args.bundle / "manifest.json").read_text())
    size = sum(f["bytes"] for f in manifest["files"].values())
    largest = sorted(manifest["files"].items(), key=lambda kv: -kv[1]["bytes"])[:3]
    print(f"bundle {args.bundle}: {size / 2**20:.1f} MiB in {len(manifest['files'])} files; members "
          f"{', '.join(manifest['members'])}; largest: "
          + ", ".join(f"{k} {v['bytes'] / 2**20:.1f} MiB" for k, v in largest))
    print("\n| essays | import stack (s) | load + verify the bundle (s) | score (s) | essays/s | peak RSS (MiB) | "
          "`stack fit`'s backbone load + embedding (s) | scoring rate / embedding rate |")
    print("|---|---|---|---|---|---|---|---|")
    for n in [int(s) for s in args.sizes.split(",")]:
        scored, embedded = [], []
        for i in range(args.rounds):
            for step in ("score", "embed")[i % 2:] + ("score", "embed")[: i % 2]:
                if step == "score":
                    scored.append(run(args.bundle, n, args.threads))
                else:
                    embedded.append(run(args.bundle, n, args.threads, EMBED)["embed"] if n else float("nan"))
        r = {k: statistics.median(x[k] for x in scored) for k in scored[0]}
        e = statistics.median(embedded)
        ratios = [b / a["score"] for a, b in zip(scored, embedded)]
        spread = f" ({min(ratios):.2f}-{max(ratios):.2f})" if len(ratios) > 1 else ""
        rate = f"{n / r['score']:.1f}" if n else "-"
        print(f"| {n:,} | {r['import']:.1f} | {r['load']:.1f} | {r['score']:.1f} | {rate} | {r['peak_rss_mib']:.0f} | "
              f"{e:.1f} | {statistics.median(ratios):.2f}{spread} |", flush=True)


if __name__ == "__main__":
    main()
