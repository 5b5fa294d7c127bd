"""Fitted estimators saved as arrays + JSON (stack.state): every savable class round-trips to identical
predictions, and a tampered, truncated, foreign or pickled file is refused with one line naming it -- loading
never unpickles anything."""

from __future__ import annotations

import copy
import json
import pickle
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from stack import state
from stack.blend.features import Layout
from stack.blend.hill_climb import HillClimbBlender
from stack.blend.nelder_mead import NelderMeadBlender
from stack.blend.persist import FittedBlend, load_blend, predict_blend, save_blend
from stack.blend.stacked import StackBlender
from stack.cache import sha256
from stack.errors import StackError
from stack.heads.kernel_ridge import KernelRidge
from stack.heads.lgbm import LGBMBlender
from stack.heads.mlp import MLPHead
from stack.heads.prepared import PreparedHead
from stack.heads.ridge import Ridge
from stack.heads.svr import KernelSVR
from stack.members.lgbm import TextBoosting
from stack.members.tfidf import TfidfConfig, TfidfRidge, vectorizer_params

from conftest import FB3, ID, PRED_COLS, TARGETS

RNG = np.random.default_rng(0)
X, X_NEW = RNG.normal(3, 0.6, (80, 18)), RNG.normal(3, 0.6, (25, 18))  # three members' six predictions each
Y = X[:, :6] * 0.6 + X[:, 6:12] * 0.4 + RNG.normal(0, 0.1, (80, 6))
SPARSE, SPARSE_NEW = (sp.random(n, 300, density=0.05, format="csr", random_state=s) for n, s in ((80, 1), (25, 2)))
WORDS = np.array(["good", "bad", "so", "the", "essay", "because"])
TEXTS = np.array([" ".join(RNG.choice(WORDS, 15)) for _ in range(105)], dtype=object)
TEXT_STATS = pd.DataFrame({"text": TEXTS, "s0": RNG.normal(size=105), "s1": RNG.normal(size=105)})

# (id, unfitted estimator, training X, new X)
ESTIMATORS = [
    ("ridge-dense", Ridge(alphas=(0.1, 1.0, 10.0)), X, X_NEW),
    ("ridge-sparse", Ridge(alphas=(0.1, 1.0, 10.0)), SPARSE, SPARSE_NEW),
    ("svr-standard", KernelSVR(scaling="standard"), X, X_NEW),
    ("svr-l2", KernelSVR(scaling="l2", C=3.0), X, X_NEW),
    ("svr-none", KernelSVR(scaling="none", gamma=0.05), X, X_NEW),
    ("krr", KernelRidge(gamma_scales=(0.5, 1.0), alphas=(0.01, 0.1, 1.0)), X, X_NEW),
    ("mlp", MLPHead(hidden=16, max_epochs=5, seeds=2), X, X_NEW),
    ("lgbm-text", TextBoosting([{"analyzer": "word", "ngram_range": [1, 2], "min_df": 1, "max_features": 500,
                                 "sublinear_tf": True, "lowercase": True}], svd=4,
                                boost={"n_estimators": 40, "learning_rate": 0.1, "early_stopping_rounds": 5, "n_jobs": 1}),
     TEXT_STATS.iloc[:80], TEXT_STATS.iloc[80:]),
    ("lgbm", LGBMBlender(n_estimators=60, learning_rate=0.1, early_stopping_rounds=10, n_jobs=1), X, X_NEW),
    ("prepared-krr", PreparedHead(KernelRidge(gamma_scales=(1.0,)), n_stats=6, block=True), X, X_NEW),
    ("prepared-lgbm", PreparedHead(LGBMBlender(n_estimators=30, n_jobs=1), n_stats=6, pca=4), X, X_NEW),
    ("hill", HillClimbBlender(negative=True), X, X_NEW),
    ("nelder-mead", NelderMeadBlender(bounds=(-1.0, 2.0)), X, X_NEW),
    ("stack", StackBlender([("ridge", Ridge(), list(range(6))), ("hill", HillClimbBlender(), list(range(18)))]), X, X_NEW),
    ("tfidf", TfidfRidge(vectorizer_params(TfidfConfig(char_ngrams=(2, 4), min_df=1, max_features=500), "tfidf"),
                         alphas=(0.3, 3.0)), TEXTS[:80], TEXTS[80:]),
]


def test_every_savable_class_is_round_tripped_here():
    import stack.members  # noqa: F401 (registers every member kind's savable heads)

    covered = {type(est).__name__ for _, est, _, _ in ESTIMATORS} | {"Layout", "FittedBlend"}  # the last two: below
    covered |= {"Thresholds", "Intervals"}  # tests/test_grid.py, tests/test_conformal.py
    covered |= {"TfidfFeatures"}  # round-tripped inside TfidfRidge and TextBoosting
    assert covered == set(state.CLASSES)


def _fitted(est, X_train):
    return copy.deepcopy(est).fit(X_train, Y)  # the listed estimator stays unfitted for the next test


@pytest.mark.parametrize("name, est, X_train, X_new", ESTIMATORS, ids=[e[0] for e in ESTIMATORS])
def test_round_trip_gives_identical_predictions(tmp_path, name, est, X_train, X_new):
    fitted = _fitted(est, X_train)
    written = state.save(fitted, tmp_path / "model")
    assert sorted(p.name for p in written) == ["model.json", "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.safetensors"]  # no temp files left
    loaded = state.load(tmp_path / "model")
    assert type(loaded) is type(fitted) and loaded is not fitted
    np.testing.assert_allclose(loaded.predict(X_new), fitted.predict(X_new), rtol=0, atol=1e-12)
    if hasattr(fitted, "get_params"):  # the constructor's parameters come back (JSON has no tuples)
        assert _params(loaded) == _params(fitted)


def _params(est) -> dict:
    return json.loads(json.dumps(est.get_params(deep=False), default=repr))


def test_a_list_of_fold_heads_round_trips_with_its_info(tmp_path):
    heads = [Ridge(alphas=(1.0, 10.0)).fit(X[k::2], Y[k::2]) for k in range(2)]
    state.save(heads, tmp_path / "heads", info={"member": "m", "folds": 2})
    loaded = state.load(tmp_path / "heads")
    assert [type(h) for h in loaded] == [Ridge, Ridge]
    for a, b in zip(heads, loaded):
        np.testing.assert_array_equal(a.predict(X_NEW), b.predict(X_NEW))
        np.testing.assert_array_equal(a.alpha_, b.alpha_)
    assert json.loads((tmp_path / "heads.json").read_text())["info"] == {"member": "m", "folds": 2}


def test_strings_pack_into_arrays_and_back():
    items = ["", "essay", "caf\u00e9", "\u6f22\u5b57", "a b"]
    packed = state.pack_strings(items)
    assert packed["utf8"].dtype == np.uint8 and packed["ends"].dtype == np.int64
    assert state.unpack_strings(packed) == items
    assert state.unpack_strings(state.pack_strings([])) == []


def _blend():
    layout = Layout(("a", "b"), "preds", (0, 0), ("a", "b"), PRED_COLS)
    est = Ridge(alphas=(1.0, 10.0)).fit(X[:, :12], Y)
    return FittedBlend(method="ridge", layout=layout, estimator=est, grid="round",
                       fingerprints={"data": "d" * 16, "folds": "f" * 16, "models": {"a": "cfg-a", "b": "cfg-b"}},
                       cv={"nested": 0.5, "in_sample": 0.4}, version="test", task_record=FB3.record())


def _frames(P):
    ids = [f"id{i}" for i in range(len(P))]
    return {m: pd.concat([pd.DataFrame({ID: ids}), pd.DataFrame(P[:, 6 * k : 6 * k + 6], columns=list(PRED_COLS))], axis=1)
            for k, m in enumerate(("a", "b"))}


def test_fitted_blend_round_trips_through_save_blend_and_load_blend(tmp_path):
    fitted = _blend()
    assert sorted(p.name for p in save_blend(fitted, tmp_path)) == ["blender.json", "blender.safetensors"]
    loaded = load_blend(tmp_path)
    for key in ("method", "layout", "grid", "fingerprints", "cv", "version", "task_record", "format"):
        assert getattr(loaded, key) == getattr(fitted, key), key
    frames = _frames(X_NEW[:, :12])
    got, want = predict_blend(loaded, frames), predict_blend(fitted, frames)
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    assert list(got.columns) == [ID, *TARGETS]


@pytest.mark.parametrize("method,est", [("hill", HillClimbBlender(negative=True)),
                                        ("nelder-mead", NelderMeadBlender(bounds=(-1.0, 2.0))),
                                        ("stack", StackBlender([("hill", HillClimbBlender(), list(range(12)))]))])
def test_every_blend_method_loads_in_a_fresh_process(tmp_path, method, est):
    """What `stack predict` and `Scorer` do: load_blend in a process that never imported the blender's module."""
    fitted = _blend()
    fitted.method, fitted.estimator = method, est.fit(X[:, :12], Y)
    save_blend(fitted, tmp_path)
    want = predict_blend(fitted, _frames(X_NEW[:, :12]))
    code = ("import sys, numpy as np, pandas as pd\n"
            "from stack.blend.persist import load_blend\n"
            f"loaded = load_blend(__import__('pathlib').Path({str(tmp_path)!r}))\n"
            f"np.save({str(tmp_path / 'got.npy')!r}, loaded.estimator.predict(np.load({str(tmp_path / 'x.npy')!r})))\n")
    np.save(tmp_path / "x.npy", X_NEW[:, :12])
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-800:]
    got = np.clip(np.load(tmp_path / "got.npy"), 1, 5)
    np.testing.assert_allclose(got, np.clip(fitted.estimator.predict(X_NEW[:, :12]), 1, 5))
    assert want.shape == (len(X_NEW), 7)


@pytest.fixture
def saved(tmp_path):
    state.save([Ridge(alphas=(1.0,)).fit(X, Y), KernelSVR().fit(X, Y)], tmp_path / "heads")
    return tmp_path / "heads"


def _refused(stem, culprit, *needles):
    with pytest.raises(StackError) as err:
        state.load(stem, "run `stack fit m`")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(str(culprit)) and "run `stack fit m`" in msg, msg
    for needle in needles:
        assert needle in msg, msg


def test_an_unknown_class_is_refused_and_nothing_is_imported_by_name(saved):
    js = saved.with_name("heads.json")
    js.write_text(js.read_text().replace('"KernelSVR"', '"os.system"'))
    _refused(saved, js, "unknown class 'os.system'")


def test_a_missing_array_is_refused(saved):
    from safetensors.numpy import load_file, save_file

    st = saved.with_name("heads.safetensors")
    arrays = load_file(str(st))
    dropped = sorted(arrays)[-1]
    save_file({k: v for k, v in arrays.items() if k != dropped}, str(st))
    _refused(saved, st, "does not belong to heads.json (another save, or edited)", "heads.safetensors")
    js = saved.with_name("heads.json")  # a json that vouches for the edited arrays: the tree names what is missing
    js.write_text(json.dumps({**json.loads(js.read_text()), "arrays_sha256": sha256(st)}))
    _refused(saved, st, f"array {dropped!r}", "heads.json")


def test_a_truncated_safetensors_file_is_refused(saved):
    st = saved.with_name("heads.safetensors")
    st.write_bytes(st.read_bytes()[:100])
    _refused(saved, st, "unreadable")


def test_a_pickle_under_the_safetensors_name_is_refused_unread(saved, monkeypatch):
    st = saved.with_name("heads.safetensors")
    st.write_bytes(pickle.dumps({"a0": np.zeros(3)}))
    monkeypatch.setattr(pickle, "loads", _no_pickle)
    monkeypatch.setattr(pickle, "load", _no_pickle)
    _refused(saved, st, "unreadable")


@pytest.mark.parametrize("content, needle", [
    (b"\x80\x04\x95 pickled", "unreadable JSON"),
    (b'{"tree": []}', "not a saved stack model of format stack-state/1"),
    (b"[1, 2]", "not a JSON mapping"),
])
def test_a_foreign_json_is_refused(saved, content, needle):
    js = saved.with_name("heads.json")
    js.write_bytes(content)
    _refused(saved, js, needle)


def test_a_malformed_tree_is_refused(saved):
    js = saved.with_name("heads.json")
    doc = json.loads(js.read_text())
    del doc["tree"][0]["state"]
    js.write_text(json.dumps(doc))
    _refused(saved, js, "malformed")


@pytest.mark.parametrize("suffix", ["json", "safetensors"])
def test_a_missing_file_is_refused(saved, suffix):
    path = saved.with_name(f"heads.{suffix}")
    path.unlink()
    _refused(saved, path, "not found")


def _no_pickle(*args, **kwargs):
    raise AssertionError("stack.state.load must never unpickle")


@pytest.mark.parametrize("name, est, X_train, X_new", ESTIMATORS, ids=[e[0] for e in ESTIMATORS])
def test_loading_never_unpickles(tmp_path, monkeypatch, name, est, X_train, X_new):
    import torch

    fitted = _fitted(est, X_train)
    state.save(fitted, tmp_path / "model")
    for module, attr in ((pickle, "load"), (pickle, "loads"), (torch, "load")):
        monkeypatch.setattr(module, attr, _no_pickle)
    np.testing.assert_allclose(state.load(tmp_path / "model").predict(X_new), fitted.predict(X_new), rtol=0, atol=1e-12)


def test_unregistered_objects_cannot_be_saved_and_names_are_unique(tmp_path):
    with pytest.raises(TypeError, match="register it with @stack.state.savable"):
        state.save({"f": object()}, tmp_path / "x")
    assert not (tmp_path / "x.json").exists()

    class Ridge:  # a second savable class of that name
        pass

    with pytest.raises(ValueError, match="two savable classes are named 'Ridge'"):
        state.savable(Ridge)
