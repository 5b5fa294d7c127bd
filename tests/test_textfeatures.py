"""Handcrafted statistics against hand-counted values; TF-IDF config checks; both write the common cache schema."""

import numpy as np
import pytest

from stack.config import load_params
from stack.errors import StackError
from stack.textfeatures.stats import FEATURES, load_wordlist, text_stats
from stack.textfeatures.tfidf import TfidfConfig, make_head


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
    with pytest.raises(StackError, match=match):
        make_head(TfidfConfig(name="tfidf", **kw))


def test_tfidf_head_learns_a_word_signal():
    rng = np.random.default_rng(0)
    texts = np.array([" ".join(rng.choice(["good", "bad", "so", "the"], 20)) for _ in range(80)], dtype=object)
    y = np.array([[t.split().count("good")] * 6 for t in texts], float)
    model = make_head(TfidfConfig(char_ngrams=(), head_alphas=(0.01, 0.1)))().fit(texts[:60], y[:60])
    pred = model.predict(texts[60:])
    assert np.corrcoef(pred[:, 0], y[60:, 0])[0, 1] > 0.9


def test_tfidf_config_rejects_backbone_keys(project):
    from stack.textfeatures.tfidf import load_config

    with pytest.raises(StackError, match="unknown key 'layers'"):
        load_config("tfidf", ["layers=[-1]"])


def test_stack_embed_dispatches_on_kind(project):
    from stack import cache
    from stack.embed import run_embed
    from stack.stages import run_folds

    params = load_params()
    run_folds(params)
    run_embed("features", params)
    train, meta = cache.read_model("features", "train")
    assert meta["kind"] == "features" and meta["feature_names"] == list(FEATURES)
    assert len(cache.emb_columns(train)) == len(FEATURES)
