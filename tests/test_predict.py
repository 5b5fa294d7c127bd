"""`stack predict` rebuilds every saved stage-one model and the saved blend, and scores new essays."""

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from stack.cli import app
from stack.schema import TARGETS

runner = CliRunner()


def ok(*args):
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def fitted(project):
    """Frozen backbone + text statistics + TF-IDF members, blended on their predictions."""
    tfidf = yaml.safe_load(open("configs/models/tfidf.yaml"))
    tfidf.update(max_features=2000, min_df=1)
    yaml.safe_dump(tfidf, open("configs/models/tfidf.yaml", "w"))
    ok("folds")
    for model in ("minilm", "features", "tfidf"):
        ok("embed", model)
    ok("blend", "--models", "minilm,features,tfidf", "--method", "ridge", "--features", "preds")
    return project


def test_predict_on_the_test_set_reproduces_the_submission(fitted):
    ok("predict", "--input", "data/fb3/test.csv", "--out", "scores.csv")
    sub, scores = pd.read_csv("submission.csv"), pd.read_csv("scores.csv")
    scores = scores.set_index("text_id").loc[sub["text_id"]].reset_index()
    pd.testing.assert_frame_equal(sub[["text_id"]], scores[["text_id"]])
    pd.testing.assert_frame_equal(sub[list(TARGETS)], scores[list(TARGETS)], atol=1e-4, rtol=0)


def test_predict_scores_new_essays_in_their_own_order(fitted):
    essays = pd.DataFrame({"text_id": ["b", "a"], "full_text": ["I like school. It is fun.", "Dogs is good pet because they loyal."],
                           "teacher": ["x", "y"]})
    essays.to_csv("new.csv", index=False)
    ok("predict", "--input", "new.csv", "--out", "out/new_scores.csv")
    scores = pd.read_csv("out/new_scores.csv")
    assert list(scores.columns) == ["text_id", *TARGETS] and list(scores["text_id"]) == ["b", "a"]
    assert scores[list(TARGETS)].to_numpy().min() >= 1.0 and scores[list(TARGETS)].to_numpy().max() <= 5.0


def test_predict_refuses_a_model_changed_since_the_blend(fitted):
    ok("embed", "minilm", "--set", "pooling=[max]")  # new heads + cache, blend not refitted
    result = runner.invoke(app, ["predict", "--input", "data/fb3/test.csv", "--out", "x.csv"])
    assert result.exit_code == 2
    assert "model 'minilm' has changed since the blend was fitted" in result.output
    assert not (fitted / "x.csv").exists()


def test_predict_names_a_model_the_blend_does_not_use(fitted):
    result = runner.invoke(app, ["predict", "--input", "data/fb3/test.csv", "--models", "minilm,features,tfidf,base"])
    assert result.exit_code == 2 and "not on 'base'" in result.output


def test_predict_without_a_saved_blend_or_with_a_broken_one(fitted):
    blender = fitted / "models" / "blend" / "blender.joblib"
    blender.write_bytes(blender.read_bytes()[:100])
    broken = runner.invoke(app, ["predict", "--input", "data/fb3/test.csv"])
    assert broken.exit_code == 2 and "blender.joblib: unreadable" in broken.output and "run `stack blend`" in broken.output
    blender.unlink()
    missing = runner.invoke(app, ["predict", "--input", "data/fb3/test.csv"])
    assert missing.exit_code == 2 and "blender.joblib: not found; run `stack blend`" in missing.output
