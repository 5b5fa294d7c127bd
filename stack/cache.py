"""Reader and writer of the Parquet caches (folds, members' OOF/test frames), atomic writes, and the one place
member frames and their fingerprint are built.

Every cache file carries a JSON fingerprint in its Parquet schema metadata (key ``stack``)::

    {"data": <hash of train+test essays>, "folds": <hash of folds.parquet>, "config": <member fingerprint>,
     "version": <stack version>, "member": <name>, "kind": <kind>, "config_json": {...resolved config...}, "cv": ...}

    from stack import cache
    train, meta = cache.read_member("minilm", "train")
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
from stack.schema import EMB_PREFIX, FOLD, ID, META_KEY, PRED_COLS, emb_cols


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
    """Read a cache file and its fingerprint; ``hint`` says how to rebuild it if it is missing or broken.
    ``rows`` False: the fingerprint alone, from the Parquet footer -> (None, fingerprint)."""
    if not path.is_file():
        raise StackError(f"{path}: not found; {hint}")
    try:
        table = pq.read_table(path) if rows else None
        schema = table.schema if rows else pq.read_schema(path)
    except (pa.ArrowException, OSError) as e:
        raise StackError(f"{path}: unreadable Parquet ({str(e).splitlines()[0][:80]}); delete it and {hint}") from None
    raw = (schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise StackError(f"{path}: has no stack fingerprint (not written by stack); delete it and {hint}")
    return (table.to_pandas() if rows else None), json.loads(raw)


def write_folds(folds: pd.DataFrame, data_fp: str) -> str:
    """Write ``cache/folds.parquet``; returns the folds hash that later caches record."""
    from stack.data import frame_hash

    fp = frame_hash(folds)
    write_table(folds, paths.folds(), {"data": data_fp, "folds": fp})
    return fp


def read_folds() -> tuple[pd.DataFrame, dict]:
    df, meta = read_table(paths.folds(), "run `stack folds` (or `dvc repro folds`)")
    if list(df.columns) != [ID, FOLD]:
        raise StackError(f"{paths.folds()}: expected columns {ID}, {FOLD}; delete it and run `stack folds`")
    return df, meta


def emb_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c.startswith(EMB_PREFIX)]


def frame(ids, preds: np.ndarray, emb: np.ndarray | None = None) -> pd.DataFrame:
    """A member frame: ``text_id``, ``pred_<target>`` x 6 from ``preds (n, 6)``, ``emb_*`` float32 from ``emb (n, d)``."""
    parts = [pd.DataFrame({ID: np.asarray(ids)}), pd.DataFrame(np.asarray(preds, np.float64), columns=list(PRED_COLS))]
    if emb is not None:
        parts.append(pd.DataFrame(np.asarray(emb, np.float32), columns=emb_cols(emb.shape[1])))
    return pd.concat(parts, axis=1)


def member_meta(name: str, kind: str, fingerprint: str, config_json: dict, ctx, cv: dict, extra: dict | None = None) -> dict:
    """The fingerprint every member cache carries (and models/<name>/member.json repeats)."""
    import stack

    return {"data": ctx.data_fp, "folds": ctx.folds_fp, "config": fingerprint, "member": name, "kind": kind,
            "version": stack.__version__, "config_json": config_json, "cv": cv, **(extra or {})}


def write_member(name: str, train: pd.DataFrame, test: pd.DataFrame, meta: dict) -> None:
    """Write ``cache/<name>/{train,test}.parquet`` together (both temps are complete before either is renamed),
    then ``cache/<name>/config.json`` (the fingerprint, CV and resolved config, for people and git)."""
    for split, df in (("train", train), ("test", test)):
        _check_member_frame(df, paths.cache_file(name, split))
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


def read_member(name: str, split: str) -> tuple[pd.DataFrame, dict]:
    path = paths.cache_file(name, split)
    df, meta = read_table(path, f"run `stack fit {name}` (or `dvc repro`)")
    _check_member_frame(df, path)
    return df, meta


def _check_member_frame(df: pd.DataFrame, path: Path) -> None:
    missing = [c for c in (ID, *PRED_COLS) if c not in df.columns]
    if missing:
        raise StackError(f"{path}: missing column {missing[0]!r}; the cache schema is text_id, pred_<target>..., emb_<i>...")
    if df[ID].duplicated().any():
        raise StackError(f"{path}: duplicate {ID} {df[ID][df[ID].duplicated()].iloc[0]!r}")
    values = df[list(PRED_COLS) + emb_columns(df)].to_numpy()
    if not np.isfinite(values).all():
        raise StackError(f"{path}: contains NaN or infinite values; delete it and rebuild the member's cache")


def member_fingerprint(name: str) -> dict:
    """The fingerprint of member ``name``'s cache, without reading its rows."""
    return read_table(paths.cache_file(name, "test"), f"run `stack fit {name}` (or `dvc repro`)", rows=False)[1]


def check_input(name: str, meta: dict, input_config: str | None, then: str = "") -> None:
    """A head (``meta``: its cache's or member.json's fingerprint, which name its ``input``) must have been fitted
    on its input's current version (``input_config``: the input's ``config`` fingerprint now)."""
    source = meta.get("input")
    if source and meta.get("input_config") != input_config:
        raise StackError(f"member {name!r} was fitted on another version of {source!r} (its cache has changed "
                         f"since); run `stack fit {name}` (or `dvc repro`){then}")


def check_fingerprints(metas: dict[str, dict], expected: dict[str, str]) -> None:
    """Every member cache must match ``expected`` (``data``/``folds`` hashes); name the first stale one."""
    for name, meta in metas.items():
        for key, want in expected.items():
            if meta.get(key) != want:
                what = {"data": "other essays", "folds": "other folds"}.get(key, f"another {key}")
                raise StackError(
                    f"{paths.member_cache(name)}: cache was written with {what} ({key} {meta.get(key)} != {want}); "
                    f"rebuild it with `dvc repro` or `stack fit {name}`"
                )
