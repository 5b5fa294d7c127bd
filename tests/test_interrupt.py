"""Killing `stack fit` (SIGINT or SIGKILL) and running it again finishes the job, reuses what was finished --
a frozen member's stored embeddings (cache/<m>/embeddings/, one part per shard as it finishes), a fine-tuned
member's finished folds -- and gives byte-identical cache files to an uninterrupted run."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from stack.cli import app

FROZEN = ["fit", "minilm", "--set=shard_size=2", "--set=batch_size=1", "--set=layers=[-1]", "--set=threads=1"]
FINETUNE = ["fit", "minilm-ft", "--set=epochs=1", "--set=max_len=48", "--set=precision=fp32", "--set=threads=1",
            "--set=lr=0.001"]
CACHE = ("train.parquet", "test.parquet")
SIGNALS = pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])


def run(args, cwd):
    return subprocess.run([sys.executable, "-m", "stack.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)


def interrupted(args, cwd, ready, sig):
    """Start ``stack ARGS``, send ``sig`` once ``ready()`` is true (before it could finish), wait for it."""
    # the child gets Ctrl-C's default action even when pytest runs in a background job (`... &`), where the shell
    # has set SIGINT to ignored and Python would inherit that instead of raising KeyboardInterrupt
    proc = subprocess.Popen([sys.executable, "-m", "stack.cli", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "finished before it could be interrupted: " + proc.stderr.read()[-500:]
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def check_stopped(code, err, sig):
    if sig == signal.SIGINT:
        assert code == 130 and "interrupted: finished outputs are kept" in err, err[-500:]
    else:
        assert code == -signal.SIGKILL


def cache_bytes(cwd: Path, member: str) -> dict:
    return {f: (cwd / "cache" / member / f).read_bytes() for f in CACHE}


def parts(cwd: Path, member: str) -> list[Path]:
    return sorted((cwd / "cache" / member / "embeddings").glob("*/part-*.parquet"))


def stored_rows(files: list[Path]) -> int:
    return sum(pq.read_metadata(p).num_rows for p in files)


@pytest.fixture
def with_folds(project):
    assert CliRunner().invoke(app, ["folds"]).exit_code == 0
    return project


@SIGNALS
def test_killed_frozen_fit_embeds_only_the_rest_byte_identical(with_folds, sig):
    result = run(FROZEN, with_folds)
    assert result.returncode == 0, result.stderr
    clean = cache_bytes(with_folds, "minilm")
    essays = stored_rows(parts(with_folds, "minilm"))  # every distinct essay, train and test
    assert f"embedded {essays} new essays, reused 0" in result.stdout
    shutil.rmtree(with_folds / "cache" / "minilm")  # nothing stored: the run to kill starts from scratch
    shutil.rmtree(with_folds / "models" / "minilm")

    code, err = interrupted(FROZEN, with_folds, lambda: len(parts(with_folds, "minilm")) >= 3, sig)
    check_stopped(code, err, sig)
    assert not (with_folds / "cache" / "minilm" / "train.parquet").exists()  # no partial output
    left = parts(with_folds, "minilm")
    assert len(left) >= 3  # shards are stored as they finish
    kept = stored_rows(left)
    assert 0 < kept < essays

    result = run(FROZEN, with_folds)
    assert result.returncode == 0, result.stderr
    done = re.search(r"embedded (\d+) new essays, reused (\d+)", result.stdout)
    assert done, result.stdout
    assert (int(done[1]), int(done[2])) == (essays - kept, kept)  # only the essays the killed run had not stored
    assert stored_rows(parts(with_folds, "minilm")) == essays
    assert cache_bytes(with_folds, "minilm") == clean


@SIGNALS
def test_killed_finetune_fit_restarts_at_the_first_unfinished_fold_byte_identical(with_folds, sig):
    member = with_folds / "models" / "minilm-ft"
    result = run(FINETUNE, with_folds)
    assert result.returncode == 0, result.stderr
    clean = cache_bytes(with_folds, "minilm-ft")
    fold0 = (member / "fold0" / "model.safetensors").read_bytes()
    for f in CACHE:
        (with_folds / "cache" / "minilm-ft" / f).unlink()
    for k in (0, 1):  # the run to kill redoes both folds; kill it once fold 0 is finished again
        (member / f"fold{k}" / "outputs.safetensors").unlink()

    outputs0 = member / "fold0" / "outputs.safetensors"
    code, err = interrupted(FINETUNE, with_folds, outputs0.exists, sig)
    check_stopped(code, err, sig)
    assert not (with_folds / "cache" / "minilm-ft" / "train.parquet").exists()
    assert outputs0.exists() and not (member / "fold1" / "outputs.safetensors").exists()

    result = run(FINETUNE, with_folds)
    assert result.returncode == 0, result.stderr
    lines = {line.split(":")[0]: line for line in result.stdout.splitlines() if line.startswith("fold ")}
    assert "finished earlier: skipped" in lines["fold 0"] and "skipped" not in lines["fold 1"], result.stdout
    assert cache_bytes(with_folds, "minilm-ft") == clean
    assert (member / "fold0" / "model.safetensors").read_bytes() == fold0
