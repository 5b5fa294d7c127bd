"""Proof run (slow, not in CI): fine-tune the packaged MiniLM on fold 0 of the full FB3 data on this CPU.

    nice -n 10 .venv/bin/pytest -m slow tests/test_train_proof.py -s
    STACK_PROOF_EPOCHS=1 STACK_PROOF_THREADS=2 STACK_PROOF_SET="max_len=384" nice -n 10 .venv/bin/pytest -m slow tests/test_train_proof.py -s

Prints the fold MCRMSE per epoch and minutes per epoch (the frozen MiniLM + ridge scores about 0.55).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_minilm_fine_tune_one_fold(tmp_path, monkeypatch):
    from stack import paths
    from stack.config import load_params
    from stack.members import fit_member
    from stack.metrics import mcrmse
    from stack.stages import load_context, run_folds
    from stack.train import store

    for name in ("params.yaml",):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    shutil.copytree(ROOT / "data" / "fb3", tmp_path / "data" / "fb3")
    monkeypatch.chdir(tmp_path)
    params = load_params()
    run_folds(params)
    epochs = int(os.environ.get("STACK_PROOF_EPOCHS", "2"))
    threads = int(os.environ.get("STACK_PROOF_THREADS", "0"))
    extra = os.environ.get("STACK_PROOF_SET", "").split()  # e.g. "max_len=384 batch_size=16"
    result = fit_member("minilm-ft", params, ["folds=[0]", f"epochs={epochs}", f"threads={threads}", *extra])
    fold = result["folds"][0]
    saved = json.loads((store.fold_dir(paths.member_dir("minilm-ft"), 0) / "config.json").read_text())  # the per-epoch history
    ctx = load_context(params)
    valid = ctx.fold == 0
    baseline, _ = mcrmse(ctx.y[valid], np.tile(ctx.y[~valid].mean(0), (valid.sum(), 1)))
    report = {
        "fold0_mcrmse": fold["mcrmse"], "mean_predictor": baseline, "precision": fold["precision"], "epochs": epochs,
        "overrides": extra, "threads": threads,
        "train_essays": int((~valid).sum()), "valid_essays": int(valid.sum()),
        "per_epoch": [{"epoch": h["epoch"], "valid_mcrmse": round(h["valid_mcrmse"], 4),
                       "train_loss": round(h["train_loss"], 4), "train_min": round(h["train_seconds"] / 60, 2),
                       "valid_min": round(h["valid_seconds"] / 60, 2)} for h in saved["history"]],
    }
    print(json.dumps(report, indent=2))
    Path(os.environ.get("STACK_PROOF_OUT", "/tmp/stack_train_proof.json")).write_text(json.dumps(report, indent=2))
    assert result["pending"] == [1, 2, 3, 4] and "mcrmse" not in result  # one fold: no cache yet
    assert not paths.cache_file("minilm-ft", "train").exists()
    assert saved["history"][saved["kept_epoch"] - 1]["valid_mcrmse"] == pytest.approx(fold["mcrmse"])
    assert fold["mcrmse"] < 0.9 * baseline
