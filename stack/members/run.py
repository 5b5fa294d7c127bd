"""``stack fit NAME``: any member, through its kind -> ``cache/<name>/`` (OOF/test frames + meta) and
``models/<name>/`` (``member.json`` + what its kind saved to score new essays); and reloading that to score.

    stack fit mpnet                         # configs/members/mpnet.yaml
    stack fit base --set epochs=1 --set folds=[0]
    scorer = load_scorer(Path("models/mpnet"))
    preds, emb = scorer.score(["An essay ...", ...])       # (n, k) for the task's k targets, (n, d) or None
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stack import cache, paths, runtime
from stack.cache import MEMBER_JSON
from stack.config import sha256_json
from stack.errors import StackError
from stack.metrics import score


def fit_member(name: str, params, overrides: list[str] | None = None) -> dict:
    """Fit member ``name`` on the folds; write its cache once every fold is done. -> its CV (``cv``: the task's
    metric and per-target values) and what its kind reports."""
    from stack.members.registry import load_member
    from stack.stages import load_context

    spec = load_member(name, overrides)
    check_stage(spec, params)
    if runtime.world_size() > 1 and not spec.kind.distributed:
        raise StackError(f"{spec.where}: a {spec.kind.name} member runs in one process (only fine-tuning uses "
                         f"torchrun's ranks); run `stack fit {name}` without torchrun")
    ctx = load_context(params)
    t0 = time.perf_counter()
    folder = paths.member_dir(name)
    fitted = spec.kind.fit(spec, ctx, folder)
    result = {"member": name, "kind": spec.kind.name, "metric": ctx.task.metric, **fitted.info}
    if fitted.oof is None:
        return {**result, "seconds": time.perf_counter() - t0, "pending": fitted.pending}
    cv = score(ctx.task, ctx.y, fitted.oof)
    result.update(cv=cv, seconds=time.perf_counter() - t0, pending=[])
    if not runtime.is_main():  # under torchrun only rank 0 writes
        return result
    fingerprint = spec.fingerprint()
    if "input_config" in fitted.extra:  # built on another member's cache: changes with it
        fingerprint = sha256_json([fingerprint, fitted.extra["input_config"]])
    meta = cache.member_meta(name, spec.kind.name, fingerprint, spec.config_json(), ctx, cv, fitted.extra)
    task = ctx.task
    cache.write_member(name, cache.frame(ctx.ids, fitted.oof, fitted.emb, task),
                       cache.frame(ctx.test[task.id], fitted.test, fitted.emb_test, task), meta, task)
    cache.write_json(paths.member_metrics(name), {task.metric: cv[task.metric], **cv["per_target"]})
    return result


def check_stage(spec, params) -> None:
    """A head must be fitted after its input: params.yaml lists it under ``heads`` (DVC's ``head@`` stage), with the
    input its config names; every other member under ``members``."""
    heads, where = params.heads or {}, params.source
    if spec.kind.name == "head":
        if spec.name in params.members:
            raise StackError(f"{where}: {spec.name!r} is a head over {spec.cfg.input!r}'s cache: list it under `heads` "
                             f"({spec.name}: {spec.cfg.input}), not `members`, so DVC fits it after its input")
        if spec.name in heads and heads[spec.name] != spec.cfg.input:
            raise StackError(f"{where}: heads.{spec.name} is {heads[spec.name]!r} but {spec.where} reads input "
                             f"{spec.cfg.input!r}; make them the same")
    elif spec.name in heads:
        raise StackError(f"{where}: {spec.name!r} is a {spec.kind.name} member, not a head: list it under `members`")


def read_member_json(folder: Path) -> dict:
    path = folder / MEMBER_JSON
    hint = f"run `stack fit {folder.name}` (or `dvc repro`)"
    meta = cache.read_json(path, hint)
    if "config_json" not in meta or "kind" not in meta:
        raise StackError(f"{path}: not a member saved by this version of stack; {hint}")
    return meta


@dataclass
class MemberScorer:
    """A fitted member loaded to score new essays."""

    name: str
    meta: dict  # member.json: the member's fingerprint, kind, resolved config, CV
    score_fn: object
    inputs: tuple[str, ...] = ()  # members whose embeddings this one reads (scored first)

    @property
    def fingerprint(self) -> str:
        return self.meta["config"]

    def score(self, texts: list[str], upstream: dict | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Predictions ``(n, k)`` and embeddings ``(n, d)`` (None for kinds without) of ``texts``; ``upstream``:
        {input member: its embeddings of the same texts}."""
        preds, emb = self.score_fn(list(texts), upstream or {})
        return np.asarray(preds, np.float64), emb

    def frame(self, essays, task, upstream: dict | None = None):
        """The member frame (id, pred_<target>..., emb_*) of ``essays`` (the task's id and text columns)."""
        preds, emb = self.score(essays[task.text].tolist(), upstream)
        return cache.frame(essays[task.id].to_numpy(), preds, emb, task)


def load_scorer(folder: Path, strict: bool = False, meta: dict | None = None) -> MemberScorer:
    """The member saved in ``folder`` (models/<name>/ or a bundle's members/<name>/), ready to score essays;
    ``meta``: its member.json when the caller has read it already (it is read once, and handed to the kind)."""
    from stack.members.registry import spec_from_json

    folder = Path(folder)
    meta = meta if meta is not None else read_member_json(folder)
    spec = spec_from_json(meta["config_json"], folder, str(folder / MEMBER_JSON), strict)
    return MemberScorer(spec.name, meta, spec.kind.scorer(spec, folder, meta, strict), tuple(spec.kind.inputs(spec)))
