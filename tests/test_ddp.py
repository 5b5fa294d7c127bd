"""`stack fit <finetune member>` under torchrun with 2 CPU processes (gloo): the cache has the single-process schema and
only rank 0 writes files (every os.replace, the last step of each atomic write, is logged with its rank)."""

import os
import shutil
import subprocess
import sys
import textwrap

import pandas as pd
from typer.testing import CliRunner

from stack.cli import app

FAST = ["epochs=1", "max_len=48", "batch_size=8", "eval_batch_size=16", "precision=fp32", "lr=0.001"]
SITE = """
import os
_replace = os.replace
def _logged(src, dst, *a, **k):
    with open(os.environ["STACK_WRITE_LOG"], "a") as f:
        f.write(f"{os.environ.get('RANK', 'launcher')} {dst}\\n")
    return _replace(src, dst, *a, **k)
os.replace = _logged
"""


def fit(cwd, launcher, log, site):
    env = {**os.environ, "PYTHONPATH": f"{site}:{os.environ.get('PYTHONPATH', '')}", "STACK_WRITE_LOG": str(log),
           "OMP_NUM_THREADS": "1"}
    args = [f"--set={s}" for s in FAST]
    result = subprocess.run([*launcher, "-m", "stack.cli", "fit", "minilm-ft", *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout


def test_two_process_ddp_writes_the_single_process_cache_schema_from_rank_0_only(project, tmp_path):
    assert CliRunner().invoke(app, ["folds"]).exit_code == 0
    single = tmp_path / "single"
    shutil.copytree(project, single)
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent(SITE))

    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    out = fit(project, torchrun, tmp_path / "ddp.log", site)
    fit(single, [sys.executable], tmp_path / "single.log", site)
    assert "minilm-ft" in out and "MCRMSE" in out
    assert out.count("fold 0: MCRMSE") == 1  # rank 1 prints nothing

    writes = [line.split(" ", 1) for line in (tmp_path / "ddp.log").read_text().splitlines()]
    ours = [(rank, dst) for rank, dst in writes if str(project) in os.path.abspath(os.path.join(project, dst))]
    for name in ("train.parquet", "test.parquet", "member.json", "minilm-ft.json", "outputs.safetensors",
                 "model.safetensors"):
        assert any(dst.endswith(name) for _, dst in ours), name
    assert {rank for rank, _ in ours} == {"0"}, ours

    for split in ("train", "test"):
        ddp = pd.read_parquet(project / "cache" / "minilm-ft" / f"{split}.parquet")
        one = pd.read_parquet(single / "cache" / "minilm-ft" / f"{split}.parquet")
        assert list(ddp.columns) == list(one.columns)
        assert list(ddp["text_id"]) == list(one["text_id"])
        assert (ddp.dtypes == one.dtypes).all()
