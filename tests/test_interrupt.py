"""Killing `stack embed` / `stack train` (SIGINT or SIGKILL) and running it again finishes the job, reuses
finished shards/folds and gives byte-identical cache files to an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stack.cli import app

EMBED = ["embed", "minilm", "--set=shard_size=2", "--set=batch_size=1", "--set=layers=[-1]", "--set=threads=1"]
TRAIN = ["train", "minilm-ft", "--set=epochs=1", "--set=max_len=48", "--set=amp=fp32", "--set=threads=1",
         "--set=lr=0.001"]
CACHE = ("train.parquet", "test.parquet")


def run(args, cwd):
    return subprocess.run([sys.executable, "-m", "stack.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)


def interrupted(args, cwd, ready, sig):
    """Start ``stack ARGS``, send ``sig`` once ``ready()`` is true (before it could finish), wait for it."""
    proc = subprocess.Popen([sys.executable, "-m", "stack.cli", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 300
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "finished before it could be interrupted: " + proc.stderr.read()[-500:]
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def cache_bytes(cwd: Path, model: str) -> dict:
    return {f: (cwd / "cache" / model / f).read_bytes() for f in CACHE}


@pytest.fixture
def with_folds(project):
    assert CliRunner().invoke(app, ["folds"]).exit_code == 0
    return project


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_killed_embed_resumes_from_finished_shards_byte_identical(with_folds, sig):
    result = run(EMBED, with_folds)
    assert result.returncode == 0, result.stderr
    clean = cache_bytes(with_folds, "minilm")
    for f in CACHE:
        (with_folds / "cache" / "minilm" / f).unlink()

    shards = with_folds / "cache" / "minilm" / "shards"
    code, err = interrupted(EMBED, with_folds, lambda: len(list(shards.glob("shard_*.parquet"))) >= 3, sig)
    if sig == signal.SIGINT:
        assert code == 130 and "interrupted: finished outputs are kept" in err
    else:
        assert code == -signal.SIGKILL
    assert not (with_folds / "cache" / "minilm" / "train.parquet").exists()  # no partial output
    assert len(list(shards.glob("shard_*.parquet"))) >= 3

    result = run(EMBED, with_folds)
    assert result.returncode == 0, result.stderr
    assert cache_bytes(with_folds, "minilm") == clean
    assert not shards.exists()


def test_killed_train_restarts_at_the_first_unfinished_fold_byte_identical(with_folds):
    result = run(TRAIN, with_folds)
    assert result.returncode == 0, result.stderr
    clean = cache_bytes(with_folds, "minilm-ft")
    fold0 = (with_folds / "models" / "minilm-ft" / "fold0" / "model.safetensors").read_bytes()
    for f in CACHE:
        (with_folds / "cache" / "minilm-ft" / f).unlink()
    (with_folds / "models" / "minilm-ft" / "fold1" / "outputs.safetensors").unlink()  # the run to kill redoes fold 1
    for p in (with_folds / "models" / "minilm-ft").rglob("*"):
        if p.name == "outputs.safetensors" and "fold0" in str(p):
            p.unlink()  # and fold 0: kill it once fold 0 is finished again

    outputs0 = with_folds / "models" / "minilm-ft" / "fold0" / "outputs.safetensors"
    code, _ = interrupted(TRAIN, with_folds, outputs0.exists, signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert not (with_folds / "cache" / "minilm-ft" / "train.parquet").exists()

    result = run(TRAIN, with_folds)
    assert result.returncode == 0, result.stderr
    assert "fold 0: " in result.stdout and "finished earlier: skipped" in result.stdout.split("fold 1:")[0]
    assert cache_bytes(with_folds, "minilm-ft") == clean
    assert (with_folds / "models" / "minilm-ft" / "fold0" / "model.safetensors").read_bytes() == fold0
