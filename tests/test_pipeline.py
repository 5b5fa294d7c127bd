"""End to end on 40 essays with a tiny random encoder: folds -> fit -> blend, schemas and determinism."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from typer.testing import CliRunner

from stack.cli import app

from conftest import PRED_COLS, TARGETS, edit_yaml

runner = CliRunner()


def stack(*args):
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def run_pipeline():
    stack("folds")
    stack("fit", "minilm")
    return stack("blend")


def read_json(path):
    return json.loads(Path(path).read_text())


def test_folds_fit_blend_write_every_file_with_its_schema(project):
    edit_yaml("configs/members/minilm.yaml", layers=[-1], pooling=["mean", "max"])
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
        assert {"data", "folds", "config", "version", "member", "kind", "config_json", "cv", "head", "precision"} <= set(meta)
        assert (meta["member"], meta["kind"], meta["precision"]) == ("minilm", "frozen", "fp32")
        assert meta["config_json"]["member"]["pooling"] == ["mean", "max"] and meta["config_json"]["backbone"]["name"] == "minilm"

    # what scoring new essays needs (arrays + JSON, no pickle), the resolved config beside the cache, the CV for DVC
    member = read_json("models/minilm/member.json")
    assert sorted(p.name for p in Path("models/minilm").iterdir()) == ["heads.json", "heads.safetensors", "member.json"]
    assert read_json("cache/minilm/config.json") == member == meta
    assert read_json("metrics/members/minilm.json")["mcrmse"] == member["cv"]["mcrmse"]
    assert sorted(p.name for p in Path("models/blend").iterdir()) == ["blend.json", "blender.json", "blender.safetensors",
                                                                      "oof.parquet"]

    sub = pd.read_csv("submission.csv")
    sample = pd.read_csv("data/fb3/sample_submission.csv")
    assert list(sub.columns) == ["text_id", *TARGETS]
    assert list(sub["text_id"]) == list(sample["text_id"])
    assert sub[list(TARGETS)].to_numpy().min() >= 1.0 and sub[list(TARGETS)].to_numpy().max() <= 5.0

    cv = read_json("metrics/cv.json")
    assert set(cv["blend"]["per_target"]) == set(TARGETS)
    assert np.isclose(cv["blend"]["mcrmse"], np.mean(list(cv["blend"]["per_target"].values())))


def test_fb3_files_keep_the_layout_they_had_before_tasks(project):
    """FB3 is recorded by the absence of a task, so its caches and metrics are byte for byte what they were before
    tasks existed: no `task` key in any meta, no `metric` key in cv.json, the same keys everywhere."""
    run_pipeline()
    folds_meta = json.loads(pq.read_schema("cache/folds.parquet").metadata[b"stack"])
    assert set(folds_meta) == {"data", "folds"}
    member = read_json("cache/minilm/config.json")
    assert set(member) == {"data", "folds", "config", "version", "member", "kind", "config_json", "cv", "head",
                           "precision", "blocks", "n_states", "weights"}
    assert set(member["cv"]) == {"mcrmse", "per_target"}
    cv = read_json("metrics/cv.json")
    assert set(cv) - {"intervals"} == {"method", "features", "models", "blend", "single", "best_single",  # intervals:
                                       "gain_over_best_single", "methods", "rounding", "weights", "n_rows",  # added
                                       "gain_over_best_single_ci95", "n_folds"}  # after tasks, on purpose
    assert set(cv["blend"]) == {"mcrmse", "per_target", "in_sample", "optimism", "ci95"}
    assert cv["rounding"] == {"tried": False, "nested_rounded": cv["rounding"]["nested_rounded"], "applied": False}


def test_pipeline_is_deterministic(project):
    run_pipeline()
    outputs = ("submission.csv", "metrics/cv.json", "cache/minilm/train.parquet", "cache/minilm/test.parquet")
    first = {p: Path(p).read_bytes() for p in outputs}
    shutil.rmtree("cache/minilm/embeddings")  # embed every essay again, not from the store
    run_pipeline()
    assert first == {p: Path(p).read_bytes() for p in outputs}
    assert "embedded 0 new essays, reused 43" in stack("fit", "minilm")  # from the store: the same bytes again
    stack("blend")
    assert first == {p: Path(p).read_bytes() for p in outputs}


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
