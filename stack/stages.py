"""Stage entry points shared by the CLI: folds, and the checks that every later stage starts with.

    from stack.stages import run_folds, load_context
    run_folds(params)               # cache/folds.parquet
    ctx = load_context(params)      # the task, essays + folds + fingerprints, validated against each other
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from stack import cache, paths
from stack.config import DEBUG_FOLDS, DEBUG_ROWS, Params
from stack.data import data_fingerprint, essays_hash, load_inputs, make_folds, read_train
from stack.errors import StackError
from stack.schema import FOLD
from stack.task import Task, load_task


@dataclass
class Context:
    task: Task
    train: pd.DataFrame  # id, text, targets (+ keep, group), fold (file order)
    test: pd.DataFrame  # id, text (file order)
    sample_ids: pd.DataFrame  # id, in submission order
    data_fp: str
    folds_fp: str

    @property
    def y(self) -> np.ndarray:
        """The targets ``(n, k)``."""
        return self.task.y(self.train)

    @property
    def fold(self) -> np.ndarray:
        return self.train[FOLD].to_numpy()

    @property
    def ids(self) -> pd.Series:
        return self.train[self.task.id]

    def expected(self) -> dict:
        """What every member cache of this context must record (cache.check_fingerprints)."""
        return {"data": self.data_fp, "folds": self.folds_fp, "task": self.task.fingerprint_meta().get("task")}


def n_folds(params: Params) -> int:
    return DEBUG_FOLDS if params.debug else params.folds.n_folds


def run_folds(params: Params) -> pd.DataFrame:
    task = load_task(params)
    group = params.folds.group
    train = read_train(params.data.train, task, debug=params.debug, debug_rows=DEBUG_ROWS, group=group)
    folds = make_folds(train, task, n_folds(params), params.folds.seed, group)
    cache.write_folds(folds, essays_hash(train, task), task, group)
    return folds


def load_context(params: Params) -> Context:
    """The task, essays and folds, checked to belong together (same training essays and task, each essay in exactly
    one fold, the folds made as params say). Folds depend on the training essays only, so a new test set needs
    no new folds."""
    task = load_task(params)
    train, test, sample = load_inputs(params, task)
    data_fp = data_fingerprint(train, test, task)
    folds, meta = cache.read_folds(task)
    rerun = "run `stack folds` (or `dvc repro`)"
    if meta.get("data") != essays_hash(train, task):
        raise StackError(f"{paths.folds()}: made from other essays than {params.source} names; {rerun}")
    if meta.get("task") != task.fingerprint_meta().get("task"):
        raise StackError(f"{paths.folds()}: made for another task than {params.source} describes; {rerun}")
    if meta.get("group") != params.folds.group:
        raise StackError(f"{paths.folds()}: made with folds.group {meta.get('group')!r}, {params.source} says "
                         f"{params.folds.group!r}; {rerun}")
    if folds[FOLD].nunique() != n_folds(params):
        raise StackError(f"{paths.folds()}: made with {folds[FOLD].nunique()} folds, {params.source} asks for "
                         f"{n_folds(params)}; {rerun}")
    merged = train.merge(folds, on=task.id, how="left", validate="one_to_one")
    if merged[FOLD].isna().any() or len(folds) != len(train):
        raise StackError(f"{paths.folds()}: does not cover the training essays one to one; {rerun}")
    merged[FOLD] = merged[FOLD].astype(np.int64)
    return Context(task, merged, test, sample, data_fp, meta["folds"])
