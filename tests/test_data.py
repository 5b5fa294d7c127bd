"""Folds (stratification, determinism, coverage) and CSV validation errors."""

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import KFold

from stack.data import essays_frame, make_folds, read_essays, read_sample_submission, read_train
from stack.errors import StackError
from stack.schema import TARGETS

from conftest import DATA


@pytest.fixture(scope="module")
def train():
    return read_train(DATA / "train.csv")


def _imbalance(train, fold):
    """Sum over (target, score level, fold) of |count in fold - expected count|."""
    k = fold.max() + 1
    total = 0.0
    for t in TARGETS:
        counts = pd.crosstab(train[t], fold)
        total += np.abs(counts.to_numpy() - counts.sum(1).to_numpy()[:, None] / k).sum()
    return total


def test_folds_cover_every_row_once_and_are_deterministic(train):
    a = make_folds(train, 5, 42)
    b = make_folds(train, 5, 42)
    c = make_folds(train, 5, 7)
    assert list(a["text_id"]) == list(train["text_id"])
    assert sorted(a["fold"].unique()) == [0, 1, 2, 3, 4]
    assert a.equals(b)
    assert not a["fold"].equals(c["fold"])
    sizes = a["fold"].value_counts()
    assert sizes.max() - sizes.min() <= 0.02 * len(train)


def test_folds_stratify_every_score_level_of_every_target(train):
    strat = make_folds(train, 5, 42)["fold"].to_numpy()
    plain = np.zeros(len(train), dtype=int)
    for k, (_, v) in enumerate(KFold(5, shuffle=True, random_state=42).split(train)):
        plain[v] = k
    assert _imbalance(train, strat) < 0.5 * _imbalance(train, plain)


def test_too_many_folds_is_an_error(train):
    with pytest.raises(StackError, match="n_folds"):
        make_folds(train.iloc[:3], 5, 42)


def _write(tmp_path, df, name="train.csv"):
    path = tmp_path / name
    df.to_csv(path, index=False)
    return path


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.drop(columns=["grammar"]), r"missing column 'grammar'"),
        (lambda d: d.rename(columns={"full_text": "fulltext"}), r"missing column 'full_text'"),
        (lambda d: d.assign(full_text=d["full_text"].where(d.index != 2, "")), r"row 3 .* empty full_text"),
        (lambda d: d.assign(full_text=d["full_text"].where(d.index != 1, "  \n\t ")), r"row 2 .* empty full_text"),
        (lambda d: d.assign(text_id=d["text_id"].where(d.index != 4, d["text_id"][0])), r"duplicate text_id"),
        (lambda d: d.assign(syntax=d["syntax"].where(d.index != 3, np.nan)), r"row 4 .* missing or non-numeric 'syntax'"),
        (lambda d: d.assign(cohesion=d["cohesion"].where(d.index != 0, 5.5)), r"row 1 .*cohesion=5.5, outside"),
        (lambda d: d.assign(vocabulary=d["vocabulary"].astype(object).where(d.index != 0, "good")), r"non-numeric 'vocabulary'"),
    ],
)
def test_train_validation_errors_name_the_problem(tmp_path, mutate, message):
    df = pd.read_csv(DATA / "train.csv").iloc[:10]
    with pytest.raises(StackError, match=message) as e:
        read_train(_write(tmp_path, mutate(df)))
    assert str(tmp_path / "train.csv") in str(e.value) and "\n" not in str(e.value)


def test_off_grid_scores_warn_but_are_kept(tmp_path):
    df = pd.read_csv(DATA / "train.csv").iloc[:10]
    df.loc[0, "grammar"] = 3.25
    with pytest.warns(UserWarning, match="off the 0.5 grid"):
        out = read_train(_write(tmp_path, df))
    assert out.loc[0, "grammar"] == 3.25


def test_extra_columns_are_ignored(tmp_path):
    df = pd.read_csv(DATA / "train.csv").iloc[:5].assign(notes="x")
    assert list(read_train(_write(tmp_path, df)).columns) == ["text_id", "full_text", *TARGETS]


def test_unreadable_files(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"text_id,full_text\nA,caf\xe9 au lait\n")
    with pytest.raises(StackError, match="not UTF-8"):
        read_essays(bad)
    with pytest.raises(StackError, match="file not found"):
        read_essays(tmp_path / "nope.csv")


def test_sample_submission_must_match_test_ids(tmp_path):
    test = read_essays(DATA / "test.csv")
    sample = pd.read_csv(DATA / "sample_submission.csv")
    path = _write(tmp_path, pd.concat([sample, sample.iloc[:1].assign(text_id="ZZZ")]), "sample.csv")
    with pytest.raises(StackError, match="'ZZZ' is not in"):
        read_sample_submission(path, test, DATA / "test.csv")
    ok = read_sample_submission(DATA / "sample_submission.csv", test, DATA / "test.csv")
    assert list(ok["text_id"]) == list(sample["text_id"])


def test_essays_in_memory_are_checked_like_a_csv():
    df = pd.DataFrame({"teacher": ["x", "y"], "full_text": ["One essay.", "Another."], "text_id": [7, 3]})
    out = essays_frame(df, "essays")
    assert list(out.columns) == ["text_id", "full_text"] and out["text_id"].tolist() == ["7", "3"]  # ids as strings
    for bad, message in [(df.drop(columns=["text_id"]), "essays: missing column 'text_id'"),
                         (df.assign(text_id=[1, 1]), "essays: duplicate text_id '1'"),
                         (df.assign(full_text=["One essay.", " "]), r"essays: row 2 \(text_id=3\) has an empty full_text")]:
        with pytest.raises(StackError, match=message):
            essays_frame(bad, "essays")
