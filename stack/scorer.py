"""Score essays with a trained stack: the saved blend and the members it uses, from the project's ``models/``
or from a bundle written by ``stack export`` (no repository, no params.yaml needed). One loader for both: the
blend first (its task says which columns and scales the scores have), then every member it reads and, before
each head, the member the head reads, each member.json read once.

    from stack import Scorer
    scorer = Scorer.load("bundle/")                     # or Scorer.from_project() inside the repository
    scorer.score(["essay one ...", "essay two ..."])     # -> DataFrame: the task's id + one column per target
    scorer.score(df)                                     # the task's id and text columns; extra columns ignored
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from stack import cache, paths
from stack.errors import StackError


class Scorer:
    """A fitted blend and its members' scorers (stack.members.run.MemberScorer), ready for new essays; ``task``:
    the saved blend's (never params.yaml's)."""

    def __init__(self, blend, members: dict, source: str):
        self.blend, self.members, self.source = blend, members, source
        self.task = blend.task

    @classmethod
    def from_project(cls, models: list[str] | None = None, root: Path = Path(".")) -> Scorer:
        """The saved blend under ``models/blend/`` and its members under ``models/<name>/``."""
        from stack.blend.persist import load_blend

        root = Path(root)
        fitted = load_blend(root / paths.blend_dir())
        need = list(fitted.layout.models)
        models = list(models or need)
        extra = [m for m in models if m not in need]
        if extra:
            raise StackError(f"the saved blend was fitted on {', '.join(need)}, not on {extra[0]!r}; "
                             f"pass --models {','.join(need)} or rerun `stack blend` with it")
        missing = [m for m in need if m not in models]
        if missing:
            raise StackError(f"the saved blend needs member {missing[0]!r} too (it was fitted on {', '.join(need)}); "
                             f"pass --models {','.join(need)}")

        def folder(name: str) -> Path:
            found = root / paths.member_dir(name)
            if not found.is_dir():
                raise StackError(f"member {name!r} has no saved model under {found}; run `stack fit {name}` "
                                 "(or `dvc repro`)")
            return found

        return _load(fitted, folder, strict=False, where=str(root / paths.blend_dir() / "blender.json"),
                     source=str(root / paths.MODELS))

    @classmethod
    def load(cls, folder) -> Scorer:
        """A bundle written by ``stack export``: its manifest is checked first (format, every file's hash)."""
        from stack.blend.persist import load_blend
        from stack.bundle import MANIFEST, verify

        folder = Path(folder)
        verify(folder)  # every file hashed before anything is read

        def member_folder(name: str) -> Path:
            found = folder / "members" / paths.check_name(name)
            if not found.is_dir():
                raise StackError(f"{found}: missing; the blend needs member {name!r}; re-export the bundle")
            return found

        return _load(load_blend(folder / "blend"), member_folder, strict=True, where=str(folder / MANIFEST),
                     source=str(folder))

    def score(self, essays, interval: float | None = None) -> pd.DataFrame:
        """Scores ``DataFrame[<id>, *targets]`` of ``essays`` (a list of texts, or a DataFrame with the task's id
        and text columns), in input order, each clipped to its target's range (on its grid where the blend maps
        to it); with ``interval`` (a coverage level such as 0.9) also ``<target>_lo`` and ``<target>_hi``."""
        from stack.blend.persist import predict_blend
        from stack.data import essays_frame

        task = self.task
        if interval is not None and not 0 < interval < 1:
            raise StackError(f"interval {interval} is not a coverage level between 0 and 1 (e.g. 0.9)")
        if len(essays) == 0:  # nothing to score: an empty result with the columns a caller expects
            cols = [*task.targets, *([c for t in task.targets for c in (f"{t}_lo", f"{t}_hi")] if interval else [])]
            return pd.DataFrame({task.id: pd.Series(dtype=str), **{c: pd.Series(dtype=float) for c in cols}})
        if isinstance(essays, pd.DataFrame):
            frame = essays_frame(essays, "essays", task)
        else:
            texts = [essays] if isinstance(essays, str) else list(essays)
            frame = essays_frame(pd.DataFrame({task.id: [str(i) for i in range(len(texts))], task.text: texts}),
                                 "essays", task)
        frames = {}
        for name, member in self.members.items():  # inputs come before the heads that read them
            upstream = {i: frames[i][cache.emb_columns(frames[i])].to_numpy() for i in member.inputs}
            frames[name] = member.frame(frame, task, upstream)
        return predict_blend(self.blend, {m: frames[m] for m in self.blend.layout.models}, frame[task.text].tolist(),
                             interval)


def _load(fitted, folder_of: Callable[[str], Path], strict: bool, where: str, source: str) -> Scorer:
    """The Scorer of ``fitted`` (a saved blend) and its members, found by ``folder_of(name)``: each member.json
    read once (stack.cache.with_inputs walks the heads' inputs and refuses one fitted on a changed input), every
    member checked against what the blend was fitted on."""
    from stack.blend.persist import check_blend
    from stack.members.run import load_scorer, read_member_json

    metas = cache.with_inputs(list(fitted.layout.models), lambda name: read_member_json(folder_of(name)))
    check_blend(fitted, {"models": {m: metas[m]["config"] for m in fitted.layout.models}}, where)
    members = {name: load_scorer(folder_of(name), strict, meta) for name, meta in metas.items()}
    return Scorer(fitted, members, source)
