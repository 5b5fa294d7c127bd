"""``run_train`` end to end on the 40-essay project: fold artifacts, the cache stage two reads, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from stack import cache, paths
from stack.config import load_params
from stack.errors import StackError
from stack.schema import ID, PRED_COLS
from stack.stages import load_context, run_folds
from stack.train import store
from stack.train.run import run_train

FAST = ["epochs=1", "max_len=48", "batch_size=8", "eval_batch_size=16", "amp=fp32", "threads=1", "lr=0.001"]


@pytest.fixture
def trained(project):
    """The project with folds and a finished 2-fold `minilm-ft` run on the tiny BERT."""
    threads = torch.get_num_threads()
    params = load_params()
    run_folds(params)
    result = run_train("minilm-ft", params, FAST)
    yield params, result
    torch.set_num_threads(threads)


def test_run_train_writes_the_cache_stage_two_reads(trained):
    from stack.blend.run import load_features

    params, result = trained
    assert result["done"] == [0, 1] and not result["pending"] and np.isfinite(result["mcrmse"])
    ctx = load_context(params)
    X, X_test, oofs = load_features(ctx, ["minilm-ft"], "both")
    assert X.shape == (40, 32 + 6) and X_test.shape == (len(ctx.test), 32 + 6)
    assert np.isfinite(X).all() and np.isfinite(X_test).all()
    train, meta = cache.read_model("minilm-ft", "train")
    assert meta["kind"] == "train" and meta["model"] == "minilm-ft"
    assert meta["data"] == ctx.data_fp and meta["folds"] == ctx.folds_fp
    assert set(meta) >= {"config", "version", "config_json", "cv"}
    assert meta["cv"]["mcrmse"] == pytest.approx(result["mcrmse"])
    assert meta["config_json"]["train"]["epochs"] == 1
    # each OOF row comes from the fold model that never saw it: equal to that fold's saved validation output
    for k in (0, 1):
        out = store.load_outputs("minilm-ft", k, _hash(ctx, k))
        got = train.set_index(ID).loc[out["valid_ids"], list(PRED_COLS)].to_numpy()
        np.testing.assert_allclose(got, out["valid_pred"], rtol=1e-6)
        assert set(out["valid_ids"]) == set(ctx.train[ID][ctx.fold == k])
        folder = paths.fold_dir("minilm-ft", k)
        assert {p.name for p in folder.iterdir()} == {"model.safetensors", "config.json", "outputs.safetensors"}
        saved = json.loads((folder / "config.json").read_text())
        assert saved["train"]["max_len"] == 48 and saved["backbone"]["name"] == "minilm" and saved["fold"] == k
    # the saved weights + config rebuild a model that reproduces the fold's validation outputs
    from stack.train.batching import encode, prepare_texts
    from stack.train.loop import predict

    tokenizer, model, cfg = store.load_fold_model("minilm-ft", 1)
    out = store.load_outputs("minilm-ft", 1, _hash(ctx, 1))
    texts = ctx.train.set_index(ID).loc[out["valid_ids"], "full_text"]
    ids = encode(prepare_texts(texts, cfg.paragraph, cfg.paragraph_token), tokenizer, cfg.max_len)
    pred, feats = predict(model, ids, 16, tokenizer.pad_token_id, torch.device("cpu"))
    np.testing.assert_allclose(pred, out["valid_pred"], atol=1e-5)
    np.testing.assert_allclose(feats, out["valid_feats"], atol=1e-5)
    test, _ = cache.read_model("minilm-ft", "test")
    mean = np.mean([store.load_outputs("minilm-ft", k, _hash(ctx, k))["test_pred"] for k in (0, 1)], axis=0)
    np.testing.assert_allclose(test[list(PRED_COLS)].to_numpy(), mean, rtol=1e-5)
    live = json.loads((store.live_dir("minilm-ft") / "metrics.json").read_text())
    assert set(live["fold0"]) == {"train_loss", "valid_mcrmse"} and "cv" in live
    assert (store.live_dir("minilm-ft") / "plots" / "metrics" / "fold1" / "valid_mcrmse.tsv").is_file()


def _hash(ctx, k):
    from stack.config import load_model_config
    from stack.train.config import load_train_config
    from stack.train.run import fold_hash

    return fold_hash(load_train_config("minilm-ft", FAST), load_model_config("minilm"), ctx, k)


def test_resume_skips_finished_folds_and_retrains_changed_ones(trained):
    params, first = trained
    weights = paths.fold_dir("minilm-ft", 0) / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    again = run_train("minilm-ft", params, FAST)
    assert all(f["skipped"] for f in again["folds"].values())
    assert weights.stat().st_mtime_ns == stamp
    assert again["mcrmse"] == pytest.approx(first["mcrmse"])
    assert again["folds"][0]["mcrmse"] == pytest.approx(first["folds"][0]["mcrmse"])
    # a killed run: fold 1 never finished -> only fold 1 trains
    (paths.fold_dir("minilm-ft", 1) / "outputs.safetensors").unlink()
    resumed = run_train("minilm-ft", params, FAST)
    assert resumed["folds"][0]["skipped"] and not resumed["folds"][1]["skipped"]
    assert weights.stat().st_mtime_ns == stamp
    # another config: every fold is stale; training only fold 0 leaves fold 1 pending and the cache untouched
    before = cache.read_model("minilm-ft", "train")[1]["config"]
    partial = run_train("minilm-ft", params, FAST[:-1] + ["lr=0.002", "folds=[0]"])
    assert not partial["folds"][0]["skipped"] and partial["pending"] == [1] and "mcrmse" not in partial
    assert cache.read_model("minilm-ft", "train")[1]["config"] == before


def test_unknown_fold_is_a_clear_error(project):
    params = load_params()
    run_folds(params)
    with pytest.raises(StackError, match="fold 7 does not exist"):
        run_train("minilm-ft", params, FAST + ["folds=[7]"])
