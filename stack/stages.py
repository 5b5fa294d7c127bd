"""Stage entry points shared by the CLI: folds, and the checks that every later stage starts with.

    from stack.stages import run_folds, load_context
    run_folds(params)               # cache/folds.parquet
    ctx = load_context(params)      # essays + folds + fingerprints, validated against each other
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from stack import cache, paths
from stack.config import DEBUG_FOLDS, Params
from stack.data import data_fingerprint, frame_hash, load_inputs, make_folds, read_train
from stack.errors import StackError
from stack.schema import FOLD, ID, TARGETS


@dataclass
class Context:
    train: pd.DataFrame  # text_id, full_text, targets, fold (file order)
    test: pd.DataFrame  # text_id, full_text (file order)
    sample_ids: pd.DataFrame  # text_id in submission order
    data_fp: str
    folds_fp: str

    @property
    def y(self) -> np.ndarray:
        return self.train[list(TARGETS)].to_numpy()

    @property
    def fold(self) -> np.ndarray:
        return self.train[FOLD].to_numpy()


def n_folds(params: Params) -> int:
    return DEBUG_FOLDS if params.debug else params.folds.n_folds


def run_folds(params: Params) -> pd.DataFrame:
    from stack.config import DEBUG_ROWS

    train = read_train(params.data.train, debug=params.debug, debug_rows=DEBUG_ROWS)
    folds = make_folds(train, n_folds(params), params.folds.seed)
    cache.write_folds(folds, frame_hash(train))
    return folds


def load_context(params: Params) -> Context:
    """Essays and folds, checked to belong together (same training essays, each in exactly one fold).

    Folds depend on the training essays only, so a new test set needs no new folds.
    """
    train, test, sample = load_inputs(params)
    data_fp = data_fingerprint(train, test)
    folds, meta = cache.read_folds()
    if meta.get("data") != frame_hash(train):
        raise StackError(f"{paths.folds()}: made from other essays than params.yaml names; run `stack folds` (or `dvc repro`)")
    merged = train.merge(folds, on=ID, how="left", validate="one_to_one")
    if merged[FOLD].isna().any() or len(folds) != len(train):
        raise StackError(f"{paths.folds()}: does not cover the training essays one to one; run `stack folds`")
    merged[FOLD] = merged[FOLD].astype(np.int64)
    return Context(merged, test, sample, data_fp, meta["folds"])
