"""Handcrafted statistics against hand-counted values; TF-IDF config checks; both members (``kind: features``,
``kind: tfidf``) write the common cache schema."""

import numpy as np
import pandas as pd
import pytest

from stack.config import load_params
from stack.errors import StackError
from stack.members.features import FEATURES, load_wordlist, text_stats
from stack.members.registry import build_spec

from conftest import FB3, TARGETS


def tfidf(**keys):
    """A tfidf member built (and checked) as if ``keys`` were in configs/members/tfidf.yaml."""
    return build_spec("tfidf", {"kind": "tfidf", **keys}, "configs/members/tfidf.yaml")


def _row(text):
    return dict(zip(FEATURES, text_stats([text])[0]))


def test_statistics_match_hand_counts():
    f = _row("I like dogs. they is nice , and i dont like catts!")
    assert np.exp(f["log_words"]) - 1 == pytest.approx(11)
    assert f["misspelled_rate"] == pytest.approx(2 / 11)  # "dont", "catts" of 11 alphabetic words
    assert f["sent_len_mean"] == pytest.approx((3 + 8) / 2) and f["sent_len_max"] == 8
    assert f["lower_sentence_start"] == pytest.approx(1 / 2)  # "they ..." starts in lower case
    assert f["lower_i_rate"] == pytest.approx(1 / 11) and f["space_before_punct"] == pytest.approx(1 / 11)
    assert f["comma_rate"] == pytest.approx(1 / 11) and f["exclaim_rate"] == pytest.approx(1 / 11)
    assert f["ttr"] == pytest.approx(9 / 11)  # "like" and "I"/"i" twice
    assert f["paragraphs"] == 1 and _row("One.\n\nTwo.")["paragraphs"] == 2


def test_empty_and_punctuation_only_texts_give_finite_rows():
    x = text_stats(["", "!!! ???"])
    assert x.shape == (2, len(FEATURES)) and np.isfinite(x).all()


def test_statistics_asked_again_for_the_same_essays_are_the_same_and_a_callers_edit_never_leaks():
    texts = ["I like dogs. they is nice", "Short."]
    first = text_stats(texts)
    first[:] = -1.0  # the caller owns what it gets
    again = text_stats(list(texts))
    np.testing.assert_array_equal(again, np.vstack([text_stats([t]) for t in texts]))  # each row computed apart
    assert not np.array_equal(text_stats(["Short."]), text_stats(["A much longer essay, with commas."]))


def test_wordlist_is_a_real_english_list():
    words = load_wordlist()
    assert len(words) > 50_000 and {"because", "students", "technology"} <= set(words) and "becuase" not in words


def test_missing_wordlist_says_how_to_install():
    with pytest.raises(StackError, match="pip install pyspellchecker"):
        load_wordlist("no_such_package/words.json.gz")


@pytest.mark.parametrize("kw, match", [
    ({"word_ngrams": (2, 1)}, "word_ngrams must be"),
    ({"word_ngrams": (), "char_ngrams": ()}, "both empty"),
    ({"char_analyzer": "chars"}, "not one of char, char_wb"),
])
def test_tfidf_rejects_bad_settings(kw, match):
    with pytest.raises(StackError, match=f"configs/members/tfidf.yaml: .*{match}"):
        tfidf(**kw)


def test_tfidf_head_learns_a_word_signal():
    rng = np.random.default_rng(0)
    texts = np.array([" ".join(rng.choice(["good", "bad", "so", "the"], 20)) for _ in range(80)], dtype=object)
    y = np.array([[t.split().count("good")] * 6 for t in texts], float)
    spec = tfidf(char_ngrams=(), head_alphas=(0.01, 0.1))
    model = spec.kind.head(spec)().fit(texts[:60], y[:60])
    pred = model.predict(texts[60:])
    assert np.corrcoef(pred[:, 0], y[60:, 0])[0, 1] > 0.9


def test_tfidf_vocabulary_never_sees_the_held_out_fold():
    texts = np.array(["alpha beta", "alpha gamma", "beta gamma", "zeta only here"], dtype=object)
    spec = tfidf(char_ngrams=(), min_df=1)
    head = spec.kind.head(spec)().fit(texts[:3], np.arange(18, dtype=float).reshape(3, 6))
    assert sorted(head.tfidf_.fitted_[0].vocabulary_) == ["alpha", "alpha beta", "alpha gamma", "beta", "beta gamma", "gamma"]


def test_tfidf_config_rejects_backbone_keys(project):
    from stack.members.registry import load_member

    with pytest.raises(StackError, match="configs/members/tfidf.yaml: unknown key 'layers'"):
        load_member("tfidf", ["layers=[-1]"])
    with pytest.raises(StackError, match="--set backbone.<key> needs a member with a backbone"):
        load_member("tfidf", ["backbone.path=/data/x"])


@pytest.mark.parametrize("member", ["features", "tfidf"])
def test_stack_fit_writes_the_cache_schema_of_its_kind(project, member):
    from stack import cache, paths
    from stack.members.run import fit_member
    from stack.stages import run_folds

    params = load_params()
    run_folds(params)
    result = fit_member(member, params, ["min_df=1", "max_features=2000"] if member == "tfidf" else None)
    train, meta = cache.read_member(member, "train", FB3)
    test, _ = cache.read_member(member, "test", FB3)
    assert meta["kind"] == member and meta["member"] == member and len(train) == 40 and len(test) == 3
    assert meta["cv"]["mcrmse"] == pytest.approx(result["cv"]["mcrmse"]) and set(meta["head"]["chosen"]) == set(TARGETS)
    assert sorted(p.name for p in paths.member_dir(member).iterdir()) == ["heads.json", "heads.safetensors", "member.json"]
    if member == "tfidf":  # predictions only
        assert cache.emb_columns(train) == []
    else:  # the statistics themselves, in FEATURES order
        assert meta["feature_names"] == list(FEATURES) and len(cache.emb_columns(train)) == len(FEATURES)
        texts = pd.read_csv("data/fb3/train.csv")["full_text"].tolist()
        np.testing.assert_allclose(train[cache.emb_columns(train)].to_numpy(), text_stats(texts), rtol=1e-6)


def test_lgbm_member_fits_its_tfidf_and_svd_on_the_training_essays_only():
    import pandas as pd

    from stack.members.lgbm import TextBoosting

    texts = ["alpha beta", "gamma delta alpha", "beta gamma"] * 10 + ["epsilon zeta only here"] * 10
    df = pd.DataFrame({"text": texts, "s0": np.arange(40.0)})
    tfidf = [{"analyzer": "word", "ngram_range": [1, 1], "min_df": 1, "max_features": 100, "sublinear_tf": True,
              "lowercase": True}]
    head = TextBoosting(tfidf, svd=2, boost={"n_estimators": 20, "n_jobs": 1}).fit(df.iloc[:30], np.ones((30, 6)))
    assert sorted(head.tfidf_.fitted_[0].vocabulary_) == ["alpha", "beta", "delta", "gamma"]
    assert head.components_.shape == (2, 4) and head.predict(df.iloc[30:]).shape == (10, 6)
