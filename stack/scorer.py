"""Score essays with a trained stack: the saved blend and the members it uses, from the project's ``models/``
or from a bundle written by ``stack export`` (no repository, no params.yaml needed).

    from stack import Scorer
    scorer = Scorer.load("bundle/")                     # or Scorer.from_project() inside the repository
    scorer.score(["essay one ...", "essay two ..."])     # -> DataFrame: text_id + six traits, input order
    scorer.score(df)                                     # text_id + full_text; extra columns ignored
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from stack import cache, paths
from stack.errors import StackError
from stack.schema import ID, TARGETS, TEXT


class Scorer:
    """A fitted blend and its members' scorers (stack.members.run.MemberScorer), ready for new essays."""

    def __init__(self, blend, members: dict, source: str):
        self.blend, self.members, self.source = blend, members, source

    @classmethod
    def from_project(cls, models: list[str] | None = None, root: Path = Path(".")) -> Scorer:
        """The saved blend under ``models/blend/`` and its members under ``models/<name>/``."""
        from stack.blend.persist import check_blend, load_blend
        from stack.members.run import load_scorer

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
        def folder(name):
            found = root / paths.member_dir(name)
            if not found.is_dir():
                raise StackError(f"member {name!r} has no saved model under {found}; run `stack fit {name}` "
                                 "(or `dvc repro`)")
            return found

        members = load_members(need, folder, load_scorer)
        check_blend(fitted, {"models": {m: members[m].fingerprint for m in need}})
        return cls(fitted, members, str(root / paths.MODELS))

    @classmethod
    def load(cls, folder) -> Scorer:
        """A bundle written by ``stack export``: its manifest is checked first (versions, file hashes)."""
        from stack.bundle import load_bundle

        return load_bundle(Path(folder))

    def score(self, essays) -> pd.DataFrame:
        """Scores ``DataFrame[text_id, *TARGETS]`` of ``essays`` (a list of texts, or a DataFrame with text_id and
        full_text), in input order, clipped to [1, 5]."""
        from stack.blend.persist import predict_blend
        from stack.data import essays_frame

        if len(essays) == 0:  # nothing to score: an empty result with the columns a caller expects
            return pd.DataFrame({ID: pd.Series(dtype=str), **{t: pd.Series(dtype=float) for t in TARGETS}})
        if isinstance(essays, pd.DataFrame):
            frame = essays_frame(essays, "essays")
        else:
            texts = [essays] if isinstance(essays, str) else list(essays)
            frame = essays_frame(pd.DataFrame({ID: [str(i) for i in range(len(texts))], TEXT: texts}), "essays")
        frames = {}
        for name, member in self.members.items():  # inputs come before the heads that read them
            upstream = {i: frames[i][cache.emb_columns(frames[i])].to_numpy() for i in member.inputs}
            frames[name] = member.frame(frame, upstream)
        return predict_blend(self.blend, {m: frames[m] for m in self.blend.layout.models})


def load_members(names: list[str], folder_of, load) -> dict:
    """{name: MemberScorer} of ``names`` and, first, every member they read (a head's input), each loaded once with
    ``load(folder_of(name))``; a head whose input changed since it was fitted is refused, naming both."""
    members: dict = {}

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in members:
            return
        if name in chain:
            raise StackError(f"members {' -> '.join((*chain, name))} read each other in a circle")
        scorer = load(folder_of(name))
        for inp in scorer.inputs:
            visit(inp, (*chain, name))
            cache.check_input(name, scorer.meta, members[inp].fingerprint)
        members[name] = scorer

    for name in names:
        visit(name, ())
    return members
