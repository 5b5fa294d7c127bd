"""Read and validate the essay CSVs (one clear error per problem), and make multilabel-stratified folds.

    from stack.data import read_train, make_folds
    train = read_train("data/fb3/train.csv")
    folds = make_folds(train, n_folds=5, seed=42)     # DataFrame[text_id, fold]
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from stack.errors import StackError
from stack.schema import FOLD, ID, SCORE_MAX, SCORE_MIN, SCORE_STEP, TARGETS, TEXT


def _read_csv(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise StackError(f"{path}: file not found (check the data paths in params.yaml)")
    try:
        df = pd.read_csv(path, dtype={ID: str, TEXT: str}, keep_default_na=False, na_values=[""], encoding="utf-8")
    except UnicodeDecodeError as e:
        raise StackError(f"{path}: not UTF-8 text (byte {e.start}); re-save the file as UTF-8") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as e:
        raise StackError(f"{path}: cannot be read as CSV ({str(e).strip().splitlines()[0]})") from None
    return df


def _row(df: pd.DataFrame, i: int) -> str:
    """1-based data row (header excluded) and id, for error messages."""
    rid = df[ID].iloc[i] if ID in df.columns else "?"
    return f"row {i + 1} ({ID}={rid})"


def _require_columns(df: pd.DataFrame, path, required) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise StackError(
            f"{path}: missing column {missing[0]!r} (found: {', '.join(map(str, df.columns))}; "
            f"required: {', '.join(required)})"
        )


def _require_rows(df: pd.DataFrame, path) -> None:
    if len(df) == 0:
        raise StackError(f"{path}: no essays (a header and no rows); add at least one row")


def _check_ids(df: pd.DataFrame, path) -> None:
    ids = df[ID]
    bad = ids.isna() | (ids.astype(str).str.strip() == "")
    if bad.any():
        raise StackError(f"{path}: {_row(df, int(np.flatnonzero(bad)[0]))} has an empty {ID}")
    dup = ids.duplicated()
    if dup.any():
        raise StackError(f"{path}: duplicate {ID} {str(ids[dup].iloc[0])!r} ({_row(df, int(np.flatnonzero(dup)[0]))}); ids must be unique")


def _check_texts(df: pd.DataFrame, path) -> None:
    empty = df[TEXT].isna() | (df[TEXT].astype(str).str.strip() == "")
    if empty.any():
        raise StackError(f"{path}: {_row(df, int(np.flatnonzero(empty)[0]))} has an empty {TEXT}; remove the row or add its text")


def _check_scores(df: pd.DataFrame, path) -> None:
    for t in TARGETS:
        col = pd.to_numeric(df[t], errors="coerce")
        bad = col.isna()
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise StackError(f"{path}: {_row(df, i)} has a missing or non-numeric {t!r} score ({df[t].iloc[i]!r})")
        out = (col < SCORE_MIN) | (col > SCORE_MAX)
        if out.any():
            i = int(np.flatnonzero(out)[0])
            raise StackError(f"{path}: {_row(df, i)} has {t}={col.iloc[i]}, outside [{SCORE_MIN}, {SCORE_MAX}]")
        off = ~np.isclose(col / SCORE_STEP, np.round(col / SCORE_STEP))
        if off.any():
            i = int(np.flatnonzero(off)[0])
            warnings.warn(f"{path}: {int(off.sum())} {t!r} scores are off the {SCORE_STEP} grid (first: {_row(df, i)}); kept as given", stacklevel=2)
        df[t] = col.astype("float64")


def read_train(path: str | Path, debug: bool = False, debug_rows: int = 48) -> pd.DataFrame:
    """Essays with scores: DataFrame[text_id, full_text, *TARGETS] in file order."""
    df = _read_csv(path)
    _require_columns(df, path, [ID, TEXT, *TARGETS])
    _require_rows(df, path)
    df = df[[ID, TEXT, *TARGETS]].copy()
    _check_ids(df, path)
    _check_texts(df, path)
    _check_scores(df, path)
    if debug:
        df = df.iloc[:debug_rows].reset_index(drop=True)
    return df


def read_essays(path: str | Path) -> pd.DataFrame:
    """Essays to score: DataFrame[text_id, full_text]; other columns are ignored."""
    return essays_frame(_read_csv(path), path)


def essays_frame(df: pd.DataFrame, where) -> pd.DataFrame:
    """DataFrame[text_id, full_text] (strings) of ``df``, checked: both columns, unique non-empty ids, no empty
    essay; other columns are ignored. ``where`` names the source in errors (a file, or "essays")."""
    _require_columns(df, where, [ID, TEXT])
    _require_rows(df, where)
    df = df[[ID, TEXT]].copy()
    _check_ids(df, where)
    _check_texts(df, where)
    df[ID] = df[ID].astype(str)
    return df.reset_index(drop=True)


def read_sample_submission(path: str | Path, test: pd.DataFrame | None = None, test_path=None) -> pd.DataFrame:
    """The submission template; when ``test`` is given, its ids must be exactly the template's."""
    df = _read_csv(path)
    _require_columns(df, path, [ID, *TARGETS])
    _check_ids(df, path)
    if test is not None:
        missing = sorted(set(df[ID]) - set(test[ID]))
        if missing:
            raise StackError(f"{path}: {ID} {missing[0]!r} is not in {test_path} ({len(missing)} missing); use the sample submission of the same test set")
        extra = sorted(set(test[ID]) - set(df[ID]))
        if extra:
            raise StackError(f"{test_path}: {ID} {extra[0]!r} is not in {path} ({len(extra)} missing); use the sample submission of the same test set")
    return df[[ID]].copy()


def make_folds(train: pd.DataFrame, n_folds: int, seed: int) -> pd.DataFrame:
    """Multilabel-stratified k-fold over the score levels of the six targets -> DataFrame[text_id, fold], ``train`` order."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    if n_folds < 2:
        raise StackError(f"params.yaml: folds.n_folds must be at least 2, got {n_folds}")
    if n_folds > len(train):
        raise StackError(f"params.yaml: folds.n_folds={n_folds} exceeds the {len(train)} training essays")
    fold = np.full(len(train), -1, dtype=np.int64)
    # One indicator per (target, score level): iterative stratification expects binary labels, and raw
    # scores would only weight samples. Each fold then holds its share of every score of every trait.
    y = pd.get_dummies(train[list(TARGETS)].astype(str)).to_numpy(dtype=np.int64)
    splitter = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for k, (_, valid) in enumerate(splitter.split(np.zeros(len(train)), y)):
        fold[valid] = k
    return pd.DataFrame({ID: train[ID].to_numpy(), FOLD: fold})


def frame_hash(df: pd.DataFrame) -> str:
    """Content hash of a frame (values and column names), independent of the file it came from."""
    h = hashlib.sha256(",".join(map(str, df.columns)).encode())
    h.update(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes())
    return h.hexdigest()[:16]


def data_fingerprint(train: pd.DataFrame, test: pd.DataFrame) -> str:
    """Hash of the essays (and scores) a cache was computed from."""
    return hashlib.sha256((frame_hash(train) + frame_hash(test)).encode()).hexdigest()[:16]


def load_inputs(params) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(train, test, sample_submission ids) from params.data, validated together."""
    from stack.config import DEBUG_ROWS

    d = params.data
    train = read_train(d.train, debug=params.debug, debug_rows=DEBUG_ROWS)
    test = read_essays(d.test)
    sample = read_sample_submission(d.sample_submission, test, d.test)
    return train, test, sample


def read_scores(path: str | Path, labels: bool) -> pd.DataFrame:
    """text_id + six score columns (predictions or labels); labels must be valid scores."""
    df = _read_csv(path)
    _require_columns(df, path, [ID, *TARGETS])
    df = df[[ID, *TARGETS]].copy()
    _check_ids(df, path)
    if labels:
        _check_scores(df, path)
    else:
        for t in TARGETS:
            col = pd.to_numeric(df[t], errors="coerce")
            if col.isna().any():
                raise StackError(f"{path}: {_row(df, int(np.flatnonzero(col.isna())[0]))} has a missing or non-numeric {t!r}")
            df[t] = col
    return df
