"""Reader and writer of the Parquet caches (folds, members' OOF/test frames), atomic writes, the one place member
frames and their meta are built and written, and the one walk of the members a head reads.

Every cache file carries its member's *meta* (JSON) in its Parquet schema metadata (key ``stack``); the same dict
is ``cache/<member>/config.json`` (for people and git) and ``models/<member>/member.json`` (for scoring)::

    {"data": <hash of train+test essays>, "folds": <hash of folds.parquet>, "config": <the member's fingerprint>,
     "version": <stack version>, "member": <name>, "kind": <kind>, "config_json": {...resolved config...}, "cv": ...,
     "task": <hash of the task's stage-one part; absent for FB3>}

A *fingerprint* is always a hash: of a member's config (``spec.fingerprint()``, ``meta["config"]``), of the essays
(``data``), of the folds (``folds``) or of the task (``task``).

    from stack import cache
    train, meta = cache.read_member("minilm", "train", task)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from stack import paths
from stack.errors import StackError
from stack.schema import EMB_PREFIX, FOLD, META_KEY, emb_cols

MEMBER_JSON = "member.json"


def atomic_path(path: Path) -> Path:
    """Temporary sibling of ``path``; ``os.replace`` it onto ``path`` once complete."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write(path: Path, write) -> Path:
    """``write(tmp)`` to a temporary sibling, then rename it onto ``path``: readers see the old file or the
    whole new one, never a part; a failed or killed write leaves no partial file under the real name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def sha256(path: Path) -> str:
    """The file's SHA-256 (hex)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_json(path: Path, hint: str) -> dict:
    """A JSON mapping this project wrote; a missing or unreadable file is one line naming it, then ``hint``."""
    if not path.is_file():
        raise StackError(f"{path}: not found; {hint}")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise StackError(f"{path}: unreadable JSON; {hint}") from None
    if not isinstance(obj, dict):
        raise StackError(f"{path}: not a JSON mapping; {hint}")
    return obj


def write_json(path: Path, obj) -> Path:
    return atomic_write(path, lambda p: p.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"))


def write_table(df: pd.DataFrame, path: Path, meta: dict) -> None:
    """Write ``df`` to ``path`` atomically (temp file + rename) with ``meta`` in the schema metadata."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), META_KEY: json.dumps(meta, sort_keys=True).encode()})
    atomic_write(path, lambda p: pq.write_table(table, p))


def read_table(path: Path, hint: str, rows: bool = True) -> tuple[pd.DataFrame | None, dict]:
    """Read a cache file and its meta; ``hint`` says how to rebuild it if it is missing or broken.
    ``rows`` False: the meta alone, from the Parquet footer -> (None, meta)."""
    if not path.is_file():
        raise StackError(f"{path}: not found; {hint}")
    try:
        table = pq.read_table(path) if rows else None
        schema = table.schema if rows else pq.read_schema(path)
    except (pa.ArrowException, OSError) as e:
        raise StackError(f"{path}: unreadable Parquet ({str(e).splitlines()[0][:80]}); delete it and {hint}") from None
    raw = (schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise StackError(f"{path}: has no stack meta (not written by stack); delete it and {hint}")
    return (table.to_pandas() if rows else None), json.loads(raw)


def write_folds(folds: pd.DataFrame, data_hash: str, task, group: str | None = None) -> str:
    """Write ``cache/folds.parquet``; returns the folds hash that later caches record."""
    from stack.data import frame_hash

    fp = frame_hash(folds)
    write_table(folds, paths.folds(), {"data": data_hash, "folds": fp, **task.fingerprint_meta(),
                                       **({"group": group} if group else {})})
    return fp


def read_folds(task) -> tuple[pd.DataFrame, dict]:
    df, meta = read_table(paths.folds(), "run `stack folds` (or `dvc repro folds`)")
    if list(df.columns) != [task.id, FOLD]:
        raise StackError(f"{paths.folds()}: expected columns {task.id}, {FOLD}; delete it and run `stack folds`")
    return df, meta


def emb_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c.startswith(EMB_PREFIX)]


def frame(ids, preds: np.ndarray, emb: np.ndarray | None, task) -> pd.DataFrame:
    """A member frame: the task's id column, ``pred_<target>`` from ``preds (n, k)``, ``emb_*`` float32 from
    ``emb (n, d)``."""
    preds = np.asarray(preds, np.float64).reshape(len(ids), task.k)
    parts = [pd.DataFrame({task.id: np.asarray(ids)}), pd.DataFrame(preds, columns=list(task.pred_cols))]
    if emb is not None:
        parts.append(pd.DataFrame(np.asarray(emb, np.float32), columns=emb_cols(emb.shape[1])))
    return pd.concat(parts, axis=1)


def member_meta(name: str, kind: str, fingerprint: str, config_json: dict, ctx, cv: dict, extra: dict | None = None) -> dict:
    """The meta every member cache carries (and models/<name>/member.json repeats)."""
    import stack

    return {"data": ctx.data_fp, "folds": ctx.folds_fp, "config": fingerprint, "member": name, "kind": kind,
            "version": stack.__version__, "config_json": config_json, "cv": cv, **ctx.task.fingerprint_meta(),
            **(extra or {})}


def write_member(name: str, train: pd.DataFrame, test: pd.DataFrame, meta: dict, task) -> None:
    """Write a member's meta and frames: ``models/<name>/member.json`` first (a cache on disk always has its
    scorer), then ``cache/<name>/{train,test}.parquet`` together (both temps are complete before either is
    renamed), then ``cache/<name>/config.json`` (the meta again, for people and git)."""
    for split, df in (("train", train), ("test", test)):
        _check_member_frame(df, paths.cache_file(name, split), task)
    write_json(paths.member_dir(name) / MEMBER_JSON, meta)
    targets = [paths.cache_file(name, s) for s in ("train", "test")]
    tmps = [atomic_path(p) for p in targets]
    try:
        for df, tmp in zip((train, test), tmps):
            write_table(df, tmp, meta)
        for tmp, path in zip(tmps, targets):
            os.replace(tmp, path)
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
    write_json(paths.member_cache(name) / "config.json", meta)


def read_member(name: str, split: str, task) -> tuple[pd.DataFrame, dict]:
    path = paths.cache_file(name, split)
    df, meta = read_table(path, f"run `stack fit {name}` (or `dvc repro`)")
    _check_member_frame(df, path, task)
    return df, meta


def _check_member_frame(df: pd.DataFrame, path: Path, task) -> None:
    missing = [c for c in (task.id, *task.pred_cols) if c not in df.columns]
    if missing:
        raise StackError(f"{path}: missing column {missing[0]!r} (the task wants {task.id}, "
                         f"{', '.join(task.pred_cols)}); rebuild it with `dvc repro` (or `stack fit`)")
    if df[task.id].duplicated().any():
        raise StackError(f"{path}: duplicate {task.id} {df[task.id][df[task.id].duplicated()].iloc[0]!r}")
    values = df[list(task.pred_cols) + emb_columns(df)].to_numpy()
    if not np.isfinite(values).all():
        raise StackError(f"{path}: contains NaN or infinite values; delete it and rebuild the member's cache")


def read_meta(name: str) -> dict:
    """Member ``name``'s meta from its cache's Parquet footer, without reading its rows."""
    return read_table(paths.cache_file(name, "test"), f"run `stack fit {name}` (or `dvc repro`)", rows=False)[1]


def check_input(name: str, meta: dict, input_config: str | None, then: str = "") -> None:
    """A head (``meta``: its cache's or member.json's, which names its ``input``) must have been fitted on its
    input's current version (``input_config``: the input's fingerprint now)."""
    source = meta.get("input")
    if source and meta.get("input_config") != input_config:
        raise StackError(f"member {name!r} was fitted on another version of {source!r} (its cache has changed "
                         f"since); run `stack fit {name}` (or `dvc repro`){then}")


def with_inputs(names: list[str], meta_of, then: str = "") -> dict[str, dict]:
    """{member: meta} of ``names`` and, first, every member they read (a head's ``input``, recursively), each
    ``meta_of(name)`` called once; a head fitted on another version of its input is refused, and so is a circle."""
    metas: dict[str, dict] = {}

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in metas:
            return
        if name in chain:
            raise StackError(f"members {' -> '.join((*chain, name))} read each other in a circle")
        meta = meta_of(name)
        if meta.get("input"):
            visit(meta["input"], (*chain, name))
            check_input(name, meta, metas[meta["input"]]["config"], then)
        metas[name] = meta

    for name in names:
        visit(name, ())
    return metas


WHAT = {"data": "other essays", "folds": "other folds", "task": "another task (params.yaml task:)"}


def check_fingerprints(metas: dict[str, dict], expected: dict[str, str | None]) -> None:
    """Every member cache must match ``expected`` (``data``/``folds``/``task`` hashes; ``task`` None: FB3, which
    caches record by its absence); name the first stale one."""
    for name, meta in metas.items():
        for key, want in expected.items():
            if meta.get(key) != want:
                raise StackError(
                    f"{paths.member_cache(name)}: cache was written with {WHAT.get(key, f'another {key}')} ({key} "
                    f"{meta.get(key)} != {want}); rebuild it with `dvc repro` or `stack fit {name}`"
                )
