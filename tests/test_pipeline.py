"""End to end on 40 essays with a tiny random encoder: folds -> embed -> blend, schemas and determinism."""

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import yaml
from typer.testing import CliRunner

from stack.cli import app
from stack.schema import PRED_COLS, TARGETS

runner = CliRunner()


def stack(*args):
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def run_pipeline():
    stack("folds")
    stack("embed", "minilm")
    return stack("blend")


def test_folds_embed_blend_write_every_file_with_its_schema(project):
    cfg = yaml.safe_load(open("configs/models/minilm.yaml"))
    cfg.update(layers=[-1], pooling=["mean", "max"])
    yaml.safe_dump(cfg, open("configs/models/minilm.yaml", "w"))
    out = run_pipeline()
    assert "blend:ridge" in out

    folds = pd.read_parquet("cache/folds.parquet")
    assert list(folds.columns) == ["text_id", "fold"] and len(folds) == 40
    assert sorted(folds["fold"].unique()) == [0, 1]

    for split, n in (("train", 40), ("test", 3)):
        table = pq.read_table(f"cache/minilm/{split}.parquet")
        df = table.to_pandas()
        assert len(df) == n and df["text_id"].is_unique
        emb = [c for c in df.columns if c.startswith("emb_")]
        assert list(df.columns) == ["text_id", *PRED_COLS, *emb]
        assert len(emb) == 2 * 32  # (last layer) x (mean, max) of the 32-wide tiny encoder
        assert all(str(df[c].dtype) == "float32" for c in emb)
        meta = json.loads(table.schema.metadata[b"stack"])
        assert {"data", "folds", "config", "version", "model"} <= set(meta)

    sub = pd.read_csv("submission.csv")
    sample = pd.read_csv("data/fb3/sample_submission.csv")
    assert list(sub.columns) == ["text_id", *TARGETS]
    assert list(sub["text_id"]) == list(sample["text_id"])
    assert sub[list(TARGETS)].to_numpy().min() >= 1.0 and sub[list(TARGETS)].to_numpy().max() <= 5.0

    cv = json.loads(open("metrics/cv.json").read())
    assert set(cv["blend"]["per_target"]) == set(TARGETS)
    assert np.isclose(cv["blend"]["mcrmse"], np.mean(list(cv["blend"]["per_target"].values())))


def test_pipeline_is_deterministic(project):
    run_pipeline()
    first = {p: open(p, "rb").read() for p in ("submission.csv", "metrics/cv.json")}
    emb1 = pd.read_parquet("cache/minilm/train.parquet")
    run_pipeline()
    assert first == {p: open(p, "rb").read() for p in first}
    pd.testing.assert_frame_equal(emb1, pd.read_parquet("cache/minilm/train.parquet"))


def test_score_command(project, tmp_path):
    labels = pd.read_csv("data/fb3/train.csv").iloc[:10]
    pred = labels[["text_id", *TARGETS]].copy()
    pred["cohesion"] += 1.0
    pred.iloc[::-1].to_csv(tmp_path / "pred.csv", index=False)  # order must not matter
    missing = runner.invoke(app, ["score", str(tmp_path / "pred.csv"), "data/fb3/train.csv"])
    assert missing.exit_code == 2 and "no prediction for text_id" in missing.output and "(30 of 40 missing)" in missing.output
    labels.to_csv(tmp_path / "labels.csv", index=False)
    out = stack("score", str(tmp_path / "pred.csv"), str(tmp_path / "labels.csv"))
    assert f"MCRMSE {1 / 6:.4f}" in out
    assert "cohesion     1.0000" in out
