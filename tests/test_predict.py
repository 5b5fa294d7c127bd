"""`stack predict` reloads every saved stage-one member and the saved blend (arrays + JSON, never pickle) and scores
new essays; every kind of member that runs offline reproduces its submission through it."""

import contextlib
import pickle
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from stack.members import KINDS

from conftest import TARGETS, edit_yaml, make_project, ok, refused, working_copy

FIT = {"tfidf": ["--set", "max_features=2000", "--set", "min_df=1"], "grammar": ["--set", "batch_size=4"],
       "lgbm": ["--set", "svd=8", "--set", "min_df=1"], "mpnet-krr": ["--set", "layers=[1,2]"], "minilm-krr": ["--set", "layers=[1,2]"]}




def assert_reproduces_the_submission(scores_csv="scores.csv"):
    sub, scores = pd.read_csv("submission.csv"), pd.read_csv(scores_csv)
    scores = scores.set_index("text_id").loc[sub["text_id"]].reset_index()
    pd.testing.assert_frame_equal(sub[["text_id"]], scores[["text_id"]])
    pd.testing.assert_frame_equal(sub[list(TARGETS)], scores[list(TARGETS)], atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_bert_dir):
    """Frozen backbone + text statistics + TF-IDF members, blended on their predictions (built once)."""
    root = make_project(tmp_path_factory.mktemp("built"), tiny_bert_dir)
    with contextlib.chdir(root):
        ok("folds")
        for member in ("minilm", "features", "tfidf"):
            ok("fit", member, *FIT.get(member, []))
        ok("blend", "--models", "minilm,features,tfidf", "--method", "ridge", "--features", "preds")
    return root


@pytest.fixture
def fitted(built, tmp_path, monkeypatch):
    return working_copy(built, tmp_path, monkeypatch)


def test_predict_on_the_test_set_reproduces_the_submission(fitted):
    ok("predict", "--input", "data/fb3/test.csv", "--out", "scores.csv")
    assert_reproduces_the_submission()


def test_predict_never_unpickles(fitted, monkeypatch):
    import torch

    def refuse(*args, **kwargs):
        raise AssertionError("stack predict must not unpickle anything")

    for module, name in ((pickle, "load"), (pickle, "loads"), (torch, "load")):
        monkeypatch.setattr(module, name, refuse)
    ok("predict", "--input", "data/fb3/test.csv", "--out", "scores.csv")
    assert_reproduces_the_submission()
    saved = sorted(str(p.relative_to(fitted)) for p in (fitted / "models").rglob("*") if p.is_file())
    assert not [p for p in saved if p.endswith((".joblib", ".pkl", ".pickle", ".bin", ".pt"))], saved


def test_predict_scores_new_essays_in_their_own_order(fitted):
    essays = pd.DataFrame({"text_id": ["b", "a"], "full_text": ["I like school. It is fun.", "Dogs is good pet because they loyal."],
                           "teacher": ["x", "y"]})
    essays.to_csv("new.csv", index=False)
    ok("predict", "--input", "new.csv", "--out", "out/new_scores.csv")
    scores = pd.read_csv("out/new_scores.csv")
    assert list(scores.columns) == ["text_id", *TARGETS] and list(scores["text_id"]) == ["b", "a"]
    assert scores[list(TARGETS)].to_numpy().min() >= 1.0 and scores[list(TARGETS)].to_numpy().max() <= 5.0


def test_the_scorer_scores_texts_and_frames_alike(fitted):
    from stack import Scorer

    scorer = Scorer.from_project()
    test = pd.read_csv("data/fb3/test.csv")
    by_frame = scorer.score(test.iloc[::-1])  # input order is kept, whatever it is
    by_text = scorer.score(test["full_text"].iloc[::-1].tolist())
    assert by_frame["text_id"].tolist() == test["text_id"].iloc[::-1].tolist()
    assert by_text["text_id"].tolist() == ["0", "1", "2"]
    pd.testing.assert_frame_equal(by_frame[list(TARGETS)], by_text[list(TARGETS)], check_exact=True)


def test_predict_refuses_a_model_changed_since_the_blend(fitted):
    ok("fit", "minilm", "--set", "pooling=[max]")  # new heads + cache, blend not refitted
    assert "model 'minilm' has changed since the blend was fitted" in refused("predict", "--input", "data/fb3/test.csv",
                                                                               "--out", "x.csv")
    assert not (fitted / "x.csv").exists()


def test_predict_names_a_model_the_blend_does_not_use(fitted):
    message = refused("predict", "--input", "data/fb3/test.csv", "--models", "minilm,features,tfidf,base")
    assert "not on 'base'" in message
    assert "needs member 'tfidf' too" in refused("predict", "--input", "data/fb3/test.csv", "--models", "minilm,features")


def _truncate(path: Path):
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


# (what breaks, the file, the start of the one-line error after the path, what to run)
BROKEN = [
    ("truncated", "blend/blender.safetensors", _truncate, "unreadable", "run `stack blend`"),
    ("pickled", "blend/blender.safetensors", lambda p: p.write_bytes(pickle.dumps({"a0": [1.0]})), "unreadable",
     "run `stack blend`"),
    ("truncated", "blend/blender.json", _truncate, "unreadable JSON", "run `stack blend`"),
    ("foreign", "blend/blender.json", lambda p: p.write_text('{"format": "joblib"}'), "not a saved stack model",
     "run `stack blend`"),
    ("missing", "blend/blender.json", Path.unlink, "not found", "run `stack blend`"),
    ("missing", "blend/blender.safetensors", Path.unlink, "not found", "run `stack blend`"),
    ("truncated", "minilm/heads.safetensors", _truncate, "unreadable", "run `stack fit minilm`"),
    ("truncated", "tfidf/heads.json", _truncate, "unreadable JSON", "run `stack fit tfidf`"),
    ("missing", "features/heads.safetensors", Path.unlink, "not found", "run `stack fit features`"),
    ("missing", "features/member.json", Path.unlink, "not found", "run `stack fit features`"),
    ("truncated", "features/member.json", _truncate, "unreadable JSON", "run `stack fit features`"),
]


@pytest.mark.parametrize("how, file, breaks, error, todo", BROKEN, ids=[f"{b[0]}-{b[1]}" for b in BROKEN])
def test_a_broken_saved_model_is_one_line_naming_the_file(fitted, how, file, breaks, error, todo):
    breaks(fitted / "models" / file)
    message = refused("predict", "--input", "data/fb3/test.csv", "--out", "x.csv")
    assert message.startswith(f"error: models/{file}: {error}") and todo in message, message
    assert not (fitted / "x.csv").exists()


def test_predict_without_any_saved_member(fitted):
    shutil.rmtree(fitted / "models" / "tfidf")
    assert "member 'tfidf' has no saved model under models/tfidf; run `stack fit tfidf`" in refused(
        "predict", "--input", "data/fb3/test.csv")


def _member_of(kind: str) -> str:
    """The member that stands for ``kind``: the first of params.yaml's members of that kind, else the first by name."""
    from stack import paths
    from stack.config import known_names, load_params, read_yaml

    names = [*load_params().all_members(), *known_names(paths.MEMBER_CONFIGS)]
    return next(n for n in names if read_yaml(paths.member_config(n)).get("kind") == kind)


# every registered kind but finetune (fine-tuning is tested in tests/test_train_*.py)
OFFLINE_KINDS = sorted(set(KINDS) - {"finetune"})


@pytest.mark.parametrize("kind", OFFLINE_KINDS)
def test_every_kind_fits_and_predict_reproduces_its_submission(project, kind):
    member = _member_of(kind)
    if kind == "grammar":  # short essays keep the tagger fast
        for split in ("train", "test"):
            path = project / "data" / "fb3" / f"{split}.csv"
            pd.read_csv(path).assign(full_text=lambda d: d["full_text"].str.slice(0, 400)).to_csv(path, index=False)
    ok("folds")
    if kind == "head":  # a head reads its input's cache: fit the input first
        source = yaml.safe_load(Path(f"configs/members/{member}.yaml").read_text())["input"]
        edit_yaml("params.yaml", members=[source], heads={member: source})
        ok("fit", source)
    else:
        edit_yaml("params.yaml", members=[member], heads={})
    assert f"wrote cache/{member}/, models/{member}/" in ok("fit", member, *FIT.get(member, []))
    ok("blend", "--models", member, "--method", "ridge", "--features", "preds")
    assert yaml.safe_load(Path("models/blend/blender.json").read_text())["info"]["members"] == [member]
    ok("predict", "--input", "data/fb3/test.csv", "--out", "scores.csv")
    assert_reproduces_the_submission()


def test_predict_with_intervals_brackets_each_score_on_its_grid(fitted):
    ok("predict", "--input", "data/fb3/test.csv", "--out", "scores.csv", "--interval", "0.9")
    scores = pd.read_csv("scores.csv")
    assert list(scores.columns) == ["text_id", *TARGETS, *[c for t in TARGETS for c in (f"{t}_lo", f"{t}_hi")]]
    for t in TARGETS:
        lo, mid, hi = scores[f"{t}_lo"], scores[t], scores[f"{t}_hi"]
        assert (lo <= mid).all() and (mid <= hi).all() and lo.min() >= 1 and hi.max() <= 5
        assert ((lo * 2) % 1 == 0).all() and ((hi * 2) % 1 == 0).all()  # widened outward to the 0.5 grid
    assert_reproduces_the_submission()  # the scores themselves do not change
    ok("predict", "--input", "data/fb3/test.csv", "--out", "wide.csv", "--interval", "0.99")
    wide = pd.read_csv("wide.csv")
    assert all((wide[f"{t}_hi"] - wide[f"{t}_lo"] >= scores[f"{t}_hi"] - scores[f"{t}_lo"]).all() for t in TARGETS)


def test_interval_levels_and_blends_without_intervals_are_one_line(fitted):
    message = refused("predict", "--input", "data/fb3/test.csv", "--out", "scores.csv", "--interval", "90")
    assert "interval 90.0 is not a coverage level between 0 and 1" in message
    edit_yaml("params.yaml", lambda p: p["blend"].update(interval=0))
    ok("blend", "--models", "minilm,features,tfidf")
    message = refused("predict", "--input", "data/fb3/test.csv", "--out", "scores.csv", "--interval", "0.9")
    assert "the saved blend has no intervals (blend.interval: 0" in message and not Path("scores.csv").exists()
    edit_yaml("params.yaml", lambda p: p["blend"].update(interval=1.5))
    assert "blend.interval is a coverage level in (0, 1)" in refused("blend")
