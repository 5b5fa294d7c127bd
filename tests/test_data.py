"""Folds (stratification, determinism, coverage, grouping) and CSV validation errors, against the task."""

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import KFold

from stack.data import essays_frame, make_folds, read_essays, read_sample_submission, read_train
from stack.errors import StackError
from stack.task import build_task

from conftest import DATA, FB3, TARGETS


@pytest.fixture(scope="module")
def train():
    return read_train(DATA / "train.csv", FB3)


def _imbalance(train, fold):
    """Sum over (target, score level, fold) of |count in fold - expected count|."""
    k = fold.max() + 1
    total = 0.0
    for t in TARGETS:
        counts = pd.crosstab(train[t], fold)
        total += np.abs(counts.to_numpy() - counts.sum(1).to_numpy()[:, None] / k).sum()
    return total


def test_folds_cover_every_row_once_and_are_deterministic(train):
    a = make_folds(train, FB3, 5, 42)
    b = make_folds(train, FB3, 5, 42)
    c = make_folds(train, FB3, 5, 7)
    assert list(a["text_id"]) == list(train["text_id"])
    assert sorted(a["fold"].unique()) == [0, 1, 2, 3, 4]
    assert a.equals(b)
    assert not a["fold"].equals(c["fold"])
    sizes = a["fold"].value_counts()
    assert sizes.max() - sizes.min() <= 0.02 * len(train)


def test_folds_stratify_every_score_level_of_every_target(train):
    strat = make_folds(train, FB3, 5, 42)["fold"].to_numpy()
    plain = np.zeros(len(train), dtype=int)
    for k, (_, v) in enumerate(KFold(5, shuffle=True, random_state=42).split(train)):
        plain[v] = k
    assert _imbalance(train, strat) < 0.5 * _imbalance(train, plain)


def test_too_many_folds_is_an_error(train):
    with pytest.raises(StackError, match="n_folds"):
        make_folds(train.iloc[:3], FB3, 5, 42)


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
        read_train(_write(tmp_path, mutate(df)), FB3)
    assert str(tmp_path / "train.csv") in str(e.value) and "\n" not in str(e.value)


def test_off_grid_scores_warn_but_are_kept(tmp_path):
    df = pd.read_csv(DATA / "train.csv").iloc[:10]
    df.loc[0, "grammar"] = 3.25
    with pytest.warns(UserWarning, match="off the 0.5 grid"):
        out = read_train(_write(tmp_path, df), FB3)
    assert out.loc[0, "grammar"] == 3.25


def test_extra_columns_are_ignored(tmp_path):
    df = pd.read_csv(DATA / "train.csv").iloc[:5].assign(notes="x")
    assert list(read_train(_write(tmp_path, df), FB3).columns) == ["text_id", "full_text", *TARGETS]


def test_unreadable_files(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"text_id,full_text\nA,caf\xe9 au lait\n")
    with pytest.raises(StackError, match="not UTF-8"):
        read_essays(bad, FB3)
    with pytest.raises(StackError, match="file not found"):
        read_essays(tmp_path / "nope.csv", FB3)


def test_sample_submission_must_match_test_ids(tmp_path):
    test = read_essays(DATA / "test.csv", FB3)
    sample = pd.read_csv(DATA / "sample_submission.csv")
    path = _write(tmp_path, pd.concat([sample, sample.iloc[:1].assign(text_id="ZZZ")]), "sample.csv")
    with pytest.raises(StackError, match="'ZZZ' is not in"):
        read_sample_submission(path, test, DATA / "test.csv", FB3)
    ok = read_sample_submission(DATA / "sample_submission.csv", test, DATA / "test.csv", FB3)
    assert list(ok["text_id"]) == list(sample["text_id"])
    reordered = test.iloc[::-1]  # no template: the test set's own order
    assert read_sample_submission(None, reordered, DATA / "test.csv", FB3)["text_id"].tolist() == reordered["text_id"].tolist()


def test_essays_in_memory_are_checked_like_a_csv():
    df = pd.DataFrame({"teacher": ["x", "y"], "full_text": ["One essay.", "Another."], "text_id": [7, 3]})
    out = essays_frame(df, "essays", FB3)
    assert list(out.columns) == ["text_id", "full_text"] and out["text_id"].tolist() == ["7", "3"]  # ids as strings
    for bad, message in [(df.drop(columns=["text_id"]), "essays: missing column 'text_id'"),
                         (df.assign(text_id=[1, 1]), "essays: duplicate text_id '1'"),
                         (df.assign(full_text=["One essay.", " "]), r"essays: row 2 \(text_id=3\) has an empty full_text")]:
        with pytest.raises(StackError, match=message):
            essays_frame(bad, "essays", FB3)


# --- other tasks ------------------------------------------------------------------------------------------------

AES = build_task({"id": "essay_id", "text": "full_text", "targets": {"score": {"min": 1, "max": 6, "step": 1}},
                  "metric": "qwk", "keep": ["prompt_id"]})


def _aes(n=60, seed=0, prompts=4):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"essay_id": [f"e{i}" for i in range(n)], "full_text": [f"essay {i} text" for i in range(n)],
                         "score": rng.integers(1, 7, n), "prompt_id": [f"p{i % prompts}" for i in range(n)],
                         "grade": rng.integers(6, 13, n)})


def test_a_task_reads_its_own_columns_and_keeps_what_it_is_told(tmp_path):
    out = read_train(_write(tmp_path, _aes()), AES, group="grade")
    assert list(out.columns) == ["essay_id", "full_text", "score", "prompt_id", "grade"]
    assert out["score"].dtype == np.float64


@pytest.mark.parametrize("mutate, group, message", [
    (lambda d: d.drop(columns=["score"]), None, r"missing column 'score' \(found: .*the columns are named in"),
    (lambda d: d.drop(columns=["essay_id"]), None, "missing column 'essay_id'"),
    (lambda d: d.drop(columns=["prompt_id"]), None, r"missing column 'prompt_id' \(task: keep\)"),
    (lambda d: d, "school", r"missing column 'school' \(folds.group\)"),
    (lambda d: d.assign(score=d["score"].astype(object).where(d.index != 5, "B")), None,
     r"row 6 \(essay_id=e5\) has a missing or non-numeric 'score' score \('B'\)"),
    (lambda d: d.assign(score=d["score"].where(d.index != 2, 7)), None, r"row 3 .*score=7, outside \[1, 6\]"),
])
def test_a_tasks_bad_data_is_one_line(tmp_path, mutate, group, message):
    with pytest.raises(StackError, match=message) as e:
        read_train(_write(tmp_path, mutate(_aes())), AES, group=group)
    assert "\n" not in str(e.value)


def test_off_a_tasks_grid_warns(tmp_path):
    df = _aes().assign(score=lambda d: d["score"].astype(float))
    df.loc[0, "score"] = 2.5
    with pytest.warns(UserWarning, match="1 'score' scores are off the 1 grid"):
        read_train(_write(tmp_path, df), AES)


def test_grouped_folds_never_split_a_group_where_stratification_alone_would():
    """40 prompts of 10 essays each; score levels tied to position within a prompt, so stratifying alone spreads
    every prompt over all folds."""
    n = 400
    df = pd.DataFrame({"essay_id": [f"e{i}" for i in range(n)], "full_text": ["x"] * n,
                       "score": (np.arange(n) % 6 + 1).astype(float), "prompt_id": [f"p{i // 10}" for i in range(n)]})
    plain = make_folds(df, AES, 5, 42)
    assert (df.assign(fold=plain["fold"]).groupby("prompt_id")["fold"].nunique() > 1).mean() > 0.9
    grouped = make_folds(df, AES, 5, 42, group="prompt_id")
    per_prompt = df.assign(fold=grouped["fold"]).groupby("prompt_id")["fold"].nunique()
    assert (per_prompt == 1).all() and sorted(grouped["fold"].unique()) == [0, 1, 2, 3, 4]
    assert grouped["fold"].value_counts().min() >= 70  # 8 prompts each: balanced
    assert make_folds(df, AES, 5, 42, group="prompt_id").equals(grouped)


def test_grouped_folds_need_as_many_groups_as_folds():
    with pytest.raises(StackError, match="folds.group 'prompt_id' has 4 groups, fewer than folds.n_folds=5; set n_folds"):
        make_folds(_aes(prompts=4), AES, 5, 42, group="prompt_id")


def test_continuous_targets_are_stratified_by_decile():
    task = build_task({"id": "essay_id", "targets": {"content": {"min": -3, "max": 5, "step": None},
                                                     "wording": {"min": -3, "max": 5, "step": None}}})
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"essay_id": [str(i) for i in range(500)], "full_text": ["x"] * 500,
                       "content": rng.normal(0, 1, 500), "wording": rng.normal(0, 1, 500)})
    fold = make_folds(df, task, 5, 0)["fold"]
    means = df.assign(fold=fold).groupby("fold")["content"].mean()
    assert means.max() - means.min() < 0.15  # deciles balanced across folds
