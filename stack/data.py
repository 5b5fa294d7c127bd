"""Read and validate the essay CSVs against the task (one clear error per problem), and make the folds:
multilabel-stratified over the targets' levels, or grouped by a column (no group in two folds) and stratified
within that where possible.

    from stack.data import read_train, make_folds
    train = read_train("data/fb3/train.csv", task)               # id, text, targets (+ keep, group columns)
    folds = make_folds(train, task, n_folds=5, seed=42)           # DataFrame[<id>, fold]
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from stack.errors import StackError
from stack.schema import FOLD


def _read_csv(path: str | Path, task) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise StackError(f"{path}: file not found (check the data paths in {task.where})")
    try:
        df = pd.read_csv(path, dtype={task.id: str, task.text: str}, keep_default_na=False, na_values=[""],
                         encoding="utf-8")
    except UnicodeDecodeError as e:
        raise StackError(f"{path}: not UTF-8 text (byte {e.start}); re-save the file as UTF-8") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as e:
        raise StackError(f"{path}: cannot be read as CSV ({str(e).strip().splitlines()[0]})") from None
    return df


def _row(df: pd.DataFrame, i: int, task) -> str:
    """1-based data row (header excluded) and id, for error messages."""
    rid = df[task.id].iloc[i] if task.id in df.columns else "?"
    return f"row {i + 1} ({task.id}={rid})"


def _require_columns(df: pd.DataFrame, path, required, task, what: str = "") -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise StackError(
            f"{path}: missing column {missing[0]!r}{what} (found: {', '.join(map(str, df.columns))}; "
            f"required: {', '.join(required)}; the columns are named in {task.where} task:)"
        )


def _require_rows(df: pd.DataFrame, path) -> None:
    if len(df) == 0:
        raise StackError(f"{path}: no essays (a header and no rows); add at least one row")


def _check_ids(df: pd.DataFrame, path, task) -> None:
    ids = df[task.id]
    bad = ids.isna() | (ids.astype(str).str.strip() == "")
    if bad.any():
        raise StackError(f"{path}: {_row(df, int(np.flatnonzero(bad)[0]), task)} has an empty {task.id}")
    dup = ids.duplicated()
    if dup.any():
        raise StackError(f"{path}: duplicate {task.id} {str(ids[dup].iloc[0])!r} "
                         f"({_row(df, int(np.flatnonzero(dup)[0]), task)}); ids must be unique")


def _check_texts(df: pd.DataFrame, path, task) -> None:
    empty = df[task.text].isna() | (df[task.text].astype(str).str.strip() == "")
    if empty.any():
        raise StackError(f"{path}: {_row(df, int(np.flatnonzero(empty)[0]), task)} has an empty {task.text}; "
                         "remove the row or add its text")


def _check_scores(df: pd.DataFrame, path, task) -> None:
    """Every target numeric and inside its range (an error naming the row); off its grid: a warning."""
    for t, scale in zip(task.targets, task.scales):
        col = pd.to_numeric(df[t], errors="coerce")
        bad = col.isna()
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise StackError(f"{path}: {_row(df, i, task)} has a missing or non-numeric {t!r} score ({df[t].iloc[i]!r})")
        out = (col < scale.min) | (col > scale.max)
        if out.any():
            i = int(np.flatnonzero(out)[0])
            raise StackError(f"{path}: {_row(df, i, task)} has {t}={col.iloc[i]:g}, outside [{scale.min:g}, "
                             f"{scale.max:g}] (the range {task.where} task: gives it)")
        off = ~scale.on_grid(col.to_numpy())
        if off.any():
            i = int(np.flatnonzero(off)[0])
            warnings.warn(f"{path}: {int(off.sum())} {t!r} scores are off the {scale.step:g} grid (first: "
                          f"{_row(df, i, task)}); kept as given", stacklevel=3)
        df[t] = col.astype("float64")


def read_train(path: str | Path, task, debug: bool = False, debug_rows: int = 48, group: str | None = None) -> pd.DataFrame:
    """Essays with scores: DataFrame[id, text, *targets, *keep (, group)] in file order."""
    df = _read_csv(path, task)
    extra = list(dict.fromkeys([*task.keep, *([group] if group else [])]))
    core = [task.id, task.text, *task.targets]
    _require_columns(df, path, core, task)
    for col in extra:  # named under keep or folds.group, not a column of the task's own
        what = " (folds.group)" if col == group and col not in task.keep else " (task: keep)"
        _require_columns(df, path, [col], task, what)
    _require_rows(df, path)
    df = df[[*core, *[c for c in extra if c not in core]]].copy()
    _check_ids(df, path, task)
    _check_texts(df, path, task)
    _check_scores(df, path, task)
    if debug:
        df = df.iloc[:debug_rows].reset_index(drop=True)
    return df


def read_essays(path: str | Path, task) -> pd.DataFrame:
    """Essays to score: DataFrame[id, text]; other columns are ignored."""
    return essays_frame(_read_csv(path, task), path, task)


def essays_frame(df: pd.DataFrame, where, task) -> pd.DataFrame:
    """DataFrame[id, text] (strings) of ``df``, checked: both columns, unique non-empty ids, no empty essay; other
    columns are ignored. ``where`` names the source in errors (a file, or "essays")."""
    _require_columns(df, where, [task.id, task.text], task)
    _require_rows(df, where)
    df = df[[task.id, task.text]].copy()
    _check_ids(df, where, task)
    _check_texts(df, where, task)
    df[task.id] = df[task.id].astype(str)
    return df.reset_index(drop=True)


def read_sample_submission(path: str | Path | None, test: pd.DataFrame, test_path, task) -> pd.DataFrame:
    """The submission's ids in order: the template's (its ids must be exactly the test set's), or, with no
    template (``path`` None), the test set's."""
    if path is None:
        return test[[task.id]].copy()
    df = _read_csv(path, task)
    _require_columns(df, path, [task.id], task)
    _check_ids(df, path, task)
    missing = sorted(set(df[task.id]) - set(test[task.id]))
    if missing:
        raise StackError(f"{path}: {task.id} {missing[0]!r} is not in {test_path} ({len(missing)} missing); use the "
                         "sample submission of the same test set (or data.sample_submission: null)")
    extra = sorted(set(test[task.id]) - set(df[task.id]))
    if extra:
        raise StackError(f"{test_path}: {task.id} {extra[0]!r} is not in {path} ({len(extra)} missing); use the "
                         "sample submission of the same test set (or data.sample_submission: null)")
    return df[[task.id]].copy()


def _levels(col: pd.Series, scale, bins: int = 10) -> pd.Series:
    """A target as class labels for stratification: its values on a grid, else its deciles."""
    if scale.step is not None:
        return col.astype(str)
    ranks = col.rank(method="first") / (len(col) + 1)
    return np.floor(ranks * bins).astype(int).astype(str)


def make_folds(train: pd.DataFrame, task, n_folds: int, seed: int, group: str | None = None) -> pd.DataFrame:
    """Folds -> DataFrame[<id>, fold] in ``train`` order. Without ``group``: multilabel-stratified over the levels
    of every target (continuous targets by decile). With it: no value of that column in two folds, the groups
    balanced over the folds by their essays' mean target level (scikit-learn's StratifiedGroupKFold)."""
    where = task.where
    if n_folds < 2:
        raise StackError(f"{where}: folds.n_folds must be at least 2, got {n_folds}")
    if n_folds > len(train):
        raise StackError(f"{where}: folds.n_folds={n_folds} exceeds the {len(train)} training essays")
    fold = np.full(len(train), -1, dtype=np.int64)
    # One indicator per (target, level): iterative stratification expects binary labels, and raw scores would only
    # weight samples. Each fold then holds its share of every level of every target.
    labels = pd.DataFrame({t: _levels(train[t], s) for t, s in zip(task.targets, task.scales)})
    if group is None:
        from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

        y = pd.get_dummies(labels).to_numpy(dtype=np.int64)
        splits = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(np.zeros(len(train)), y)
    else:
        from sklearn.model_selection import StratifiedGroupKFold

        groups = train[group]
        if groups.isna().any():
            i = int(np.flatnonzero(groups.isna())[0])
            raise StackError(f"{where}: folds.group {group!r}: {_row(train, i, task)} has no value; give every "
                             "essay its group")
        n_groups = groups.nunique()
        if n_groups < n_folds:
            raise StackError(f"{where}: folds.group {group!r} has {n_groups} group{'s' if n_groups > 1 else ''}, fewer than folds.n_folds="
                             f"{n_folds}; set n_folds to at most {n_groups}")
        # one stratum per essay: the mean over targets of its level's rank, in (at most) 5 bands
        rank = np.mean([train[t].rank(pct=True).to_numpy() for t in task.targets], axis=0)
        strata = np.minimum((rank * 5).astype(int), 4)
        with warnings.catch_warnings():  # "the least populated class has fewer members than n_splits"
            warnings.simplefilter("ignore", UserWarning)
            splits = list(StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
                          .split(np.zeros(len(train)), strata, groups.astype(str).to_numpy()))
    for k, (_, valid) in enumerate(splits):
        fold[valid] = k
    return pd.DataFrame({task.id: train[task.id].to_numpy(), FOLD: fold})


def frame_hash(df: pd.DataFrame) -> str:
    """Content hash of a frame (values and column names), independent of the file it came from."""
    h = hashlib.sha256(",".join(map(str, df.columns)).encode())
    h.update(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes())
    return h.hexdigest()[:16]


def essays_hash(train: pd.DataFrame, task) -> str:
    """Hash of the training essays and their scores (the id, text and target columns: not ``keep``, which only
    reports read)."""
    return frame_hash(train[[task.id, task.text, *task.targets]])


def data_fingerprint(train: pd.DataFrame, test: pd.DataFrame, task) -> str:
    """Hash of the essays (and scores) a cache was computed from."""
    return hashlib.sha256((essays_hash(train, task) + frame_hash(test)).encode()).hexdigest()[:16]


def load_inputs(params, task) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(train, test, submission ids) from params.data, validated together."""
    from stack.config import DEBUG_ROWS

    d = params.data
    train = read_train(d.train, task, debug=params.debug, debug_rows=DEBUG_ROWS, group=params.folds.group)
    test = read_essays(d.test, task)
    sample = read_sample_submission(d.sample_submission, test, d.test, task)
    return train, test, sample


def read_scores(path: str | Path, labels: bool, task, extra=()) -> pd.DataFrame:
    """id + one column per target (predictions or labels) + those of ``extra`` the file has; labels must be valid
    scores."""
    df = _read_csv(path, task)
    _require_columns(df, path, [task.id, *task.targets], task)
    df = df[[task.id, *task.targets, *[c for c in extra if c in df.columns and c not in task.targets]]].copy()
    _check_ids(df, path, task)
    df[task.id] = df[task.id].astype(str)
    if labels:
        _check_scores(df, path, task)
    else:
        for t in task.targets:
            col = pd.to_numeric(df[t], errors="coerce")
            if col.isna().any():
                raise StackError(f"{path}: {_row(df, int(np.flatnonzero(col.isna())[0]), task)} has a missing or "
                                 f"non-numeric {t!r}")
            df[t] = col
    return df
