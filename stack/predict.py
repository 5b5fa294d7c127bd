"""``stack predict``: score new essays (any CSV with the task's id and text columns) with the saved members and
the saved blend -- the project's ``models/``, or a bundle (``--bundle DIR``, see stack.bundle) -- through
stack.scorer. The task (columns, targets) is the saved blend's.

    stack predict --input essays.csv --out scores.csv                # the members the saved blend was fitted on
    stack predict --bundle bundle/ --input essays.csv --out scores.csv
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def run_predict(input_csv: Path, out_csv: Path, models: list[str] | None = None, bundle: Path | None = None,
                interval: float | None = None) -> pd.DataFrame:
    """Scores DataFrame[<id>, *targets] (and ``<target>_lo``/``_hi`` with ``interval``) for the essays in
    ``input_csv``, written to ``out_csv``."""
    from stack.cache import atomic_write
    from stack.data import read_essays
    from stack.scorer import Scorer

    scorer = Scorer.load(bundle) if bundle is not None else Scorer.from_project(models)
    essays = read_essays(input_csv, scorer.task)
    scores = scorer.score(essays, interval)
    atomic_write(Path(out_csv), lambda p: scores.to_csv(p, index=False))
    return scores
