"""End to end on the 40-essay ``project``: fake model caches with known quality -> ``run_blend`` outputs,
honest (nested) vs in-sample CV, saved blend round trip, fingerprint refusal, submission format."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from stack import cache, paths
from stack.blend.persist import load_blend, predict_blend
from stack.blend.run import run_blend
from stack.config import load_params
from stack.errors import StackError
from stack.stages import load_context, run_folds

from conftest import FB3, ID, SCORE_STEP, TARGETS


def write_fake_models(noise: dict[str, float], emb_dim: int = 8, seed: int = 0, uniform: bool = False, folds_fp=None,
                      config: str | None = None):
    """cache/<name>/ for each ``{name: noise}``: OOF = truth + noise, embeddings carry the truth + noise.

    Needs cache/folds.parquet (``run_folds``). Returns the params.
    """
    params = load_params()
    ctx = load_context(params)
    rng = np.random.default_rng(seed)

    def frame(ids, truth, sd):
        err = rng.uniform(-sd, sd, truth.shape) if uniform else rng.normal(0, sd, truth.shape)
        emb = np.hstack([truth, rng.normal(size=(len(truth), emb_dim - truth.shape[1]))]) + rng.normal(0, sd, (len(truth), emb_dim))
        return cache.frame(ids, truth + err, emb, ctx.task)

    for name, sd in noise.items():
        test_truth = rng.uniform(1, 5, (len(ctx.test), ctx.task.k))
        meta = cache.member_meta(name, "frozen", config or f"cfg-{name}", {"member": {}, "backbone": None}, ctx, {})
        meta["folds"] = folds_fp or ctx.folds_fp
        cache.write_member(name, frame(ctx.ids, ctx.y, sd), frame(ctx.test[ctx.task.id], test_truth, sd), meta, ctx.task)
    return params


def cache_fingerprints(members) -> dict:
    """What the current caches of ``members`` were made with, as ``load_blend``'s ``expect``."""
    return {"models": {m: cache.read_member(m, "test", FB3)[1]["config"] for m in members}}


@pytest.fixture
def two_models(project):
    run_folds(load_params())
    return write_fake_models({"a": 0.3, "b": 0.3, "c": 0.8})


def test_blend_beats_single_models_and_writes_every_output(two_models):
    params = two_models
    r = run_blend(params, ["a", "b", "c"], "hill", "emb", compare=["ridge", "nelder-mead"])
    saved = json.loads(paths.cv_metrics().read_text())
    assert saved == json.loads(json.dumps(r))
    assert {"blend", "single", "method", "features", "models"} <= set(saved)
    assert r["features"] == "preds"  # hill reads predictions whatever --features says
    assert set(r["methods"]) == {"hill", "ridge", "nelder-mead"}
    assert set(r["blend"]["per_target"]) == set(TARGETS)
    assert r["blend"]["mcrmse"] < r["best_single"]["mcrmse"] - 0.03  # two independent 0.3-noise models averaged
    assert r["gain_over_best_single"] > 0.03
    w = r["weights"]["cohesion"]
    assert w["a"] > 0.25 and w["b"] > 0.25 and w["c"] < w["a"]

    sub = pd.read_csv(paths.SUBMISSION)
    sample = pd.read_csv("data/fb3/sample_submission.csv")
    assert list(sub.columns) == [ID, *TARGETS]
    assert sub[ID].tolist() == sample[ID].tolist()
    assert sub[list(TARGETS)].to_numpy().min() >= 1.0 and sub[list(TARGETS)].to_numpy().max() <= 5.0
    assert set(json.loads((paths.blend_dir() / "blend.json").read_text())["seconds"]) == {"hill", "ridge", "nelder-mead"}
    # the fitted blend is arrays + JSON (stack.state), no pickle
    assert sorted(p.name for p in paths.blend_dir().iterdir()) == ["blend.json", "blender.json", "blender.safetensors", "oof.parquet"]
    oof = pd.read_parquet(paths.blend_dir() / "oof.parquet")
    assert len(oof) == len(load_context(params).train)


@pytest.mark.parametrize("method,features", [("ridge", "emb"), ("hill", "preds"), ("stack", "both")])
def test_nested_score_is_not_more_optimistic_than_in_sample(two_models, method, features):
    r = run_blend(two_models, ["a", "b", "c"], method, features, compare=[])
    assert r["blend"]["mcrmse"] >= r["blend"]["in_sample"]["mcrmse"]
    assert r["blend"]["optimism"] >= 0


def test_metrics_are_deterministic(two_models):
    run_blend(two_models, ["a", "b"], "stack", "emb", compare=["ridge", "nelder-mead"])
    first = paths.cv_metrics().read_bytes(), paths.SUBMISSION.read_bytes()
    run_blend(two_models, ["a", "b"], "stack", "emb", compare=["ridge", "nelder-mead"])
    assert (paths.cv_metrics().read_bytes(), paths.SUBMISSION.read_bytes()) == first


def test_saved_blend_round_trip_reproduces_the_submission(two_models):
    run_blend(two_models, ["a", "b"], "stack", "both", compare=[])
    fitted = load_blend(expect=cache_fingerprints(["a", "b"]))
    frames = {m: cache.read_member(m, "test", FB3)[0] for m in ("a", "b")}
    frames["b"] = frames["b"].iloc[::-1]  # joined on text_id, not row order
    got = predict_blend(fitted, frames).set_index(ID)
    sub = pd.read_csv(paths.SUBMISSION).set_index(ID)
    np.testing.assert_allclose(got.loc[sub.index, list(TARGETS)].to_numpy(), sub[list(TARGETS)].to_numpy(), atol=1e-9)


def test_loading_refuses_other_caches_and_names_the_model(two_models):
    run_blend(two_models, ["a", "b"], "hill", "preds", compare=[])
    with pytest.raises(StackError, match="model 'b' has changed"):
        load_blend(expect={"models": {"a": "cfg-a", "b": "cfg-b-edited"}})
    with pytest.raises(StackError, match="other folds"):
        load_blend(expect={"folds": "0123456789abcdef"})
    with pytest.raises(StackError, match="not on 'c'"):
        load_blend(expect={"models": {"c": "cfg-c"}})
    fitted = load_blend()
    with pytest.raises(StackError, match="no features for model 'b'"):
        predict_blend(fitted, {"a": cache.read_member("a", "test", FB3)[0]})


def test_a_rebuilt_cache_makes_the_saved_blend_refuse(two_models):
    run_blend(two_models, ["a", "b"], "hill", "preds", compare=[])
    load_blend(expect=cache_fingerprints(["a", "b"]))
    write_fake_models({"b": 0.3}, config="cfg-b-v2")  # model b re-embedded with another config
    with pytest.raises(StackError, match="model 'b' has changed since the blend was fitted"):
        load_blend(expect=cache_fingerprints(["a", "b"]))


def test_blend_refuses_a_cache_from_other_folds(two_models):
    write_fake_models({"b": 0.3}, folds_fp="feedfacefeedface")
    with pytest.raises(StackError, match=r"cache[/\\]b: cache was written with other folds"):
        run_blend(two_models, ["a", "b"], "hill", "preds", compare=[])


def test_rounding_only_when_cv_says_it_helps(project):
    run_folds(load_params())
    params = write_fake_models({"a": 0.2, "b": 0.2}, uniform=True)  # |noise| < 0.25: rounding recovers the truth
    r = run_blend(params, ["a", "b"], "hill", "preds", compare=[], try_rounding=True)
    assert r["rounding"]["applied"] and r["blend"]["mcrmse"] < 0.05
    sub = pd.read_csv(paths.SUBMISSION)[list(TARGETS)].to_numpy()
    np.testing.assert_allclose(sub / SCORE_STEP, np.round(sub / SCORE_STEP))

    params = write_fake_models({"a": 0.6, "b": 0.6}, seed=1)
    r = run_blend(params, ["a", "b"], "hill", "preds", compare=[], try_rounding=True)
    assert not r["rounding"]["applied"]
    assert r["rounding"]["nested_rounded"] >= r["blend"]["mcrmse"]


def test_embeddings_plus_oof_predictions_in_one_feature_blender_are_refused(two_models):
    # same-fold CV of such a blender leaks the held-out labels through the stage-one heads (see run.LEAK)
    with pytest.raises(StackError, match="--features both lets ridge see"):
        run_blend(two_models, ["a", "b"], "ridge", "both")
    # a compared method that reads any features is scored on predictions when `both` is asked for
    r = run_blend(two_models, ["a", "b"], "hill", "both", compare=["lgbm"])
    assert r["methods"]["lgbm"]["features"] == "preds"
    r = run_blend(two_models, ["a", "b"], "stack", "both")  # members see one kind each; default compare (ridge ...)
    assert r["features"] == "both" and r["methods"]["ridge"]["features"] == "preds"


def test_bad_blend_options_in_params_are_refused():
    from stack.blend.config import BlendConfig
    from stack.blend.run import options_from

    assert options_from(BlendConfig(bounds=(0, 1), negative=True)).bounds == (0, 1)
    with pytest.raises(StackError, match="blend.bounds must be"):
        options_from(BlendConfig(bounds=(1.0, 0.0)))
    with pytest.raises(StackError, match="blend.svr_scaling 'minmax'"):
        options_from(BlendConfig(svr_scaling="minmax"))


def test_unknown_names_are_refused(two_models):
    with pytest.raises(StackError, match="valid: emb, preds, both"):
        run_blend(two_models, ["a"], "ridge", "embeddings")
    with pytest.raises(StackError, match=r"member 'zzz' has no cache at cache.zzz \(cached: a, b, c\); run `stack fit zzz`"):
        run_blend(two_models, ["a", "zzz"], "ridge", "emb")


def test_stack_blend_never_imports_torch(tmp_path):
    code = ("import sys, numpy as np\n"
            "import stack.blend.run, stack.blend.registry as r, stack.state as s\n"
            "X, y = np.random.default_rng(0).normal(size=(60, 12)), np.random.default_rng(1).normal(size=(60, 6))\n"
            "small = {'lgbm': {'n_estimators': 20, 'n_jobs': 1}}\n"
            "fitted = [r.get_blender(n).make().set_params(**small.get(n, {})).fit(X, y) for n in r.BLENDERS]\n"
            f"s.save(fitted, __import__('pathlib').Path({str(tmp_path / 'blenders')!r}))\n"
            f"[e.predict(X) for e in s.load(__import__('pathlib').Path({str(tmp_path / 'blenders')!r}))]\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_fine_tuned_members_oof_embeddings_never_feed_a_blender(project):
    """Each row's OOF vector came from a fold model trained on the other folds' labels: a blender fitted on them
    would see the labels of the rows it scores (the same leak a head over them refuses, tests/test_heads.py)."""
    run_folds(load_params())
    params = write_fake_models({"a": 0.3, "ft": 0.3})
    (train, meta), (test, _) = cache.read_member("ft", "train", FB3), cache.read_member("ft", "test", FB3)
    cache.write_member("ft", train, test, {**meta, "kind": "finetune"}, FB3)
    r = run_blend(params, ["a", "ft"], "ridge", "emb", compare=["stack"])
    assert r["methods"]["ridge"]["features"] == "emb"
    layout = load_blend().layout
    assert layout.emb_dims == (8, 0) and layout.pred_models == ("ft",)  # ft: predictions only


def test_blend_measures_its_intervals_nested_and_saves_them(two_models):
    r = run_blend(two_models, ["a", "b", "c"], "ridge", "preds", compare=[])
    iv = r["intervals"]
    assert iv["level"] == 0.9 and set(iv["per_target"]) == set(TARGETS)
    for row in iv["per_target"].values():
        assert 0.6 <= row["coverage"] <= 1 and row["width"] > 0 and row["constant_width"] > 0
        assert sum(v["n"] for v in row["by_level"].values()) == 40
    fitted = load_blend()
    assert fitted.intervals is not None and fitted.intervals.scores.shape == (40, 6)
    frames = {m: cache.read_member(m, "test", FB3)[0] for m in ("a", "b", "c")}
    out = predict_blend(fitted, frames, ["some essay"] * 3, 0.9)
    for t in TARGETS:
        assert (out[f"{t}_lo"] <= out[t]).all() and (out[t] <= out[f"{t}_hi"]).all()
    assert list(predict_blend(fitted, frames).columns) == [ID, *TARGETS]  # no interval asked: none given
