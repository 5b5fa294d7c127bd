"""The prepared GPU check (benchmarks/gpu_check.py) runs its plumbing on a machine without a GPU: CI runs this."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import ROOT

STEP_ROWS = ["pytest -m gpu", "minilm-ft bf16", "minilm-ft fp16", "tiny deberta base+large", "frozen minilm"]


def test_gpu_check_dry_run_skips_every_cuda_step_and_exits_0(tmp_path):
    """benchmarks/gpu_check.py without a CUDA device: each step builds its project, checks its configs and says
    "skipped: no CUDA device"; one table, also in $OUT/gpu_check.md; exit code 0."""
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OUT": str(out)}
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--workdir", str(tmp_path / "w")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in run.stdout.splitlines()
            if line.startswith("| ") and not line.startswith("| step")]
    assert [r[0] for r in rows] == STEP_ROWS, run.stdout
    for row in rows:
        assert row[1] == "skipped" and row[2].startswith("no CUDA device: "), row
    assert "dry run: no CUDA device" in run.stdout
    assert (out / "gpu_check.md").read_text() in run.stdout and (out / "gpu_check.log").is_file()
