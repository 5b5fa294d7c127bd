"""A fine-tuned member (``kind: finetune``) end to end on the 40-essay project through ``fit_member``: fold
artifacts, the architecture saved beside them, the cache stage two reads, scoring new essays from the saved
folds, resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from stack import cache, paths
from stack.config import load_params
from stack.errors import StackError
from stack.members import fit_member
from stack.members.registry import load_member
from stack.stages import load_context, run_folds
from stack.train import store

from conftest import FB3, ID, PRED_COLS, TEXT

MEMBER = "minilm-ft"
FAST = ["epochs=1", "max_len=48", "batch_size=8", "eval_batch_size=16", "precision=fp32", "threads=1", "lr=0.001"]


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def trained(project, one_thread):
    """The project with folds and a finished 2-fold `minilm-ft` fit on the tiny BERT."""
    params = load_params()
    run_folds(params)
    return params, fit_member(MEMBER, params, FAST)


def _hash(ctx, k, overrides=FAST):
    from stack.members.finetune import fold_hash

    return fold_hash(load_member(MEMBER, overrides), ctx, k)


def test_fit_writes_fold_artifacts_and_the_cache_stage_two_reads(trained):
    from stack.blend.features import make_layout, matrix
    from stack.blend.run import load_frames

    params, result = trained
    assert result["kind"] == "finetune" and sorted(result["folds"]) == [0, 1]
    assert not result["pending"] and np.isfinite(result["cv"]["mcrmse"])
    assert not any(f["skipped"] for f in result["folds"].values())
    ctx = load_context(params)
    train_frames, test_frames, _ = load_frames(ctx, [MEMBER])
    layout = make_layout(train_frames, [MEMBER], "both", ctx.task)
    X, X_test = matrix(train_frames, layout), matrix(test_frames, layout)
    assert X.shape == (40, 32 + 6) and X_test.shape == (len(ctx.test), 32 + 6)
    assert np.isfinite(X).all() and np.isfinite(X_test).all()
    train, meta = cache.read_member(MEMBER, "train", FB3)
    assert meta["kind"] == "finetune" and meta["member"] == MEMBER and meta["trained_folds"] == [0, 1]
    assert meta["data"] == ctx.data_fp and meta["folds"] == ctx.folds_fp
    assert set(meta) >= {"config", "version", "config_json", "cv"}
    assert meta["cv"]["mcrmse"] == pytest.approx(result["cv"]["mcrmse"])
    assert meta["config_json"]["member"]["epochs"] == 1 and meta["config_json"]["backbone"]["name"] == "minilm"
    assert json.loads((paths.member_dir(MEMBER) / "member.json").read_text())["config"] == meta["config"]
    assert json.loads(paths.member_metrics(MEMBER).read_text())["mcrmse"] == pytest.approx(result["cv"]["mcrmse"])
    # each OOF row comes from the fold model that never saw it: equal to that fold's saved validation output
    for k in (0, 1):
        out = store.load_outputs(paths.member_dir(MEMBER), k, _hash(ctx, k))
        got = train.set_index(ID).loc[out["valid_ids"], list(PRED_COLS)].to_numpy()
        np.testing.assert_allclose(got, out["valid_pred"], rtol=1e-6)
        assert set(out["valid_ids"]) == set(ctx.train[ID][ctx.fold == k])
        folder = store.fold_dir(paths.member_dir(MEMBER), k)
        assert {p.name for p in folder.iterdir()} == {"model.safetensors", "config.json", "outputs.safetensors"}
        saved = json.loads((folder / "config.json").read_text())
        assert saved["member"]["max_len"] == 48 and saved["backbone"]["name"] == "minilm" and saved["fold"] == k
        assert saved["precision"] == "fp32" and len(saved["history"]) == 1
    test, _ = cache.read_member(MEMBER, "test", FB3)
    outs = [store.load_outputs(paths.member_dir(MEMBER), k, _hash(ctx, k)) for k in (0, 1)]
    np.testing.assert_allclose(test[list(PRED_COLS)].to_numpy(), np.mean([o["test_pred"] for o in outs], 0), rtol=1e-5)
    live = json.loads((paths.live_dir(MEMBER) / "metrics.json").read_text())
    assert set(live["fold0"]) == {"train_loss", "valid_mcrmse"} and "cv" in live
    assert (paths.live_dir(MEMBER) / "plots" / "metrics" / "fold1" / "valid_mcrmse.tsv").is_file()


def test_saved_architecture_and_fold_weights_reproduce_the_validation_outputs(trained):
    """models/<m>/backbone/ holds the tokenizer and the architecture (no weights): with a fold's weights it
    rebuilds the model offline."""
    from stack.train.batching import encode, prepare_texts
    from stack.train.loop import predict
    from stack.train.model import model_from_folder

    params, _ = trained
    arch = paths.member_dir(MEMBER) / "backbone"
    names = {p.name for p in arch.iterdir()}
    assert "config.json" in names and "tokenizer_config.json" in names
    assert not any(n.endswith((".safetensors", ".bin")) for n in names)
    ctx = load_context(params)
    cfg = load_member(MEMBER, FAST).cfg
    tokenizer, model = model_from_folder(cfg, arch)
    store.load_weights(model, paths.member_dir(MEMBER), 1, "refit")
    out = store.load_outputs(paths.member_dir(MEMBER), 1, _hash(ctx, 1))
    texts = ctx.train.set_index(ID).loc[out["valid_ids"], TEXT]
    ids = encode(prepare_texts(texts, cfg.paragraph, cfg.paragraph_token), tokenizer, cfg.max_len)
    pred, feats = predict(model, ids, 16, tokenizer.pad_token_id, torch.device("cpu"))
    np.testing.assert_allclose(pred, out["valid_pred"], atol=1e-5)
    np.testing.assert_allclose(feats, out["valid_feats"], atol=1e-5)
    with pytest.raises(StackError, match="fold7/model.safetensors: not found; refit"):
        store.load_weights(model, paths.member_dir(MEMBER), 7, "refit")


@pytest.mark.parametrize("encoder", ["tiny_bert_dir", "tiny_deberta_dir"])
def test_load_scorer_reproduces_the_members_test_predictions(encoder, request, tmp_path, monkeypatch, one_thread):
    """``load_scorer(models/<m>)`` scores essays from the saved folds alone: the cached test predictions (the mean
    of the folds) and pooled features come back, for BERT and for DeBERTa-v2 (relative attention)."""
    from stack.members.run import load_scorer

    from conftest import make_project

    make_project(tmp_path / "p", request.getfixturevalue(encoder), members=(MEMBER,))
    monkeypatch.chdir(tmp_path / "p")
    params = load_params()
    run_folds(params)
    fit_member(MEMBER, params, FAST)
    test, _ = cache.read_member(MEMBER, "test", FB3)
    scorer = load_scorer(Path("models") / MEMBER)
    assert scorer.name == MEMBER and scorer.meta["kind"] == "finetune"
    ctx = load_context(params)
    preds, feats = scorer.score(ctx.test[TEXT].tolist())
    assert preds.shape == (len(ctx.test), 6) and feats.shape == (len(ctx.test), 32)
    by_id = test.set_index(ID).loc[ctx.test[ID]]
    np.testing.assert_allclose(preds, by_id[list(PRED_COLS)].to_numpy(), atol=1e-5)
    np.testing.assert_allclose(feats, by_id[[c for c in test.columns if c.startswith("emb_")]].to_numpy(), atol=1e-5)
    frame = scorer.frame(ctx.test.iloc[::-1], FB3)  # joined on text_id, whatever the order
    np.testing.assert_allclose(frame.set_index(ID).loc[ctx.test[ID], list(PRED_COLS)].to_numpy(), preds, atol=1e-6)


def test_resume_skips_finished_folds_and_retrains_changed_ones(trained):
    params, first = trained
    weights = store.fold_dir(paths.member_dir(MEMBER), 0) / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    again = fit_member(MEMBER, params, FAST)
    assert all(f["skipped"] for f in again["folds"].values()) and not again["pending"]
    assert weights.stat().st_mtime_ns == stamp
    assert again["cv"]["mcrmse"] == pytest.approx(first["cv"]["mcrmse"])
    assert again["folds"][0]["mcrmse"] == pytest.approx(first["folds"][0]["mcrmse"])
    # the architecture deleted after every fold finished: written again, without training anything
    arch = paths.member_dir(MEMBER) / "backbone"
    saved = sorted(p.name for p in arch.iterdir())
    shutil.rmtree(arch)
    assert all(f["skipped"] for f in fit_member(MEMBER, params, FAST)["folds"].values())
    assert sorted(p.name for p in arch.iterdir()) == saved and weights.stat().st_mtime_ns == stamp
    # a killed run: fold 1 never finished -> only fold 1 trains
    (store.fold_dir(paths.member_dir(MEMBER), 1) / "outputs.safetensors").unlink()
    resumed = fit_member(MEMBER, params, FAST)
    assert resumed["folds"][0]["skipped"] and not resumed["folds"][1]["skipped"]
    assert weights.stat().st_mtime_ns == stamp
    assert resumed["cv"]["mcrmse"] == pytest.approx(first["cv"]["mcrmse"])  # same seed per fold: the same model again
    # another config: every fold is stale; fitting only fold 0 leaves fold 1 pending and the cache untouched
    before = cache.read_member(MEMBER, "train", FB3)[1]["config"]
    partial = fit_member(MEMBER, params, FAST[:-1] + ["lr=0.002", "folds=[0]"])
    assert not partial["folds"][0]["skipped"] and partial["pending"] == [1] and "mcrmse" not in partial
    assert cache.read_member(MEMBER, "train", FB3)[1]["config"] == before


def test_fitting_some_folds_writes_no_cache(project, one_thread):
    from typer.testing import CliRunner

    from stack.cli import app

    params = load_params()
    run_folds(params)
    result = CliRunner().invoke(app, ["fit", MEMBER, *(f"--set={s}" for s in FAST), "--set", "folds=[0]"])
    assert result.exit_code == 0, result.output
    assert "fold 0: MCRMSE" in result.output and "fold 1:" not in result.output
    assert "folds 1 not fitted yet; the cache is written once every fold is done" in result.output
    assert (store.fold_dir(paths.member_dir(MEMBER), 0) / "outputs.safetensors").is_file()
    assert not store.fold_dir(paths.member_dir(MEMBER), 1).exists()
    assert not paths.member_cache(MEMBER).exists() and not (paths.member_dir(MEMBER) / "member.json").exists()
    assert not paths.member_metrics(MEMBER).exists()
    rest = fit_member(MEMBER, params, FAST + ["folds=[1]"])  # the other fold completes the member
    assert rest["folds"][1]["skipped"] is False and rest["pending"] == [] and np.isfinite(rest["cv"]["mcrmse"])
    assert paths.cache_file(MEMBER, "train").is_file() and paths.cache_file(MEMBER, "test").is_file()


def test_unknown_fold_is_a_clear_error(project):
    params = load_params()
    run_folds(params)
    with pytest.raises(StackError, match="configs/members/minilm-ft.yaml: fold 7 does not exist"):
        fit_member(MEMBER, params, FAST + ["folds=[7]"])
