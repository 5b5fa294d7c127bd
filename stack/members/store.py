"""Frozen members' embeddings by essay content: ``cache/<member>/embeddings/<key>/part-<k>.parquet``.

Each part holds ``text_hash`` (SHA-256 of the essay's UTF-8 text) and ``emb_*`` columns; ``key`` hashes what
decides an embedding (where the weights come from, chunking, pooling, layers, precision). Pointing ``data.test``
at a new CSV embeds only essays never seen before, and a killed run resumes at the first shard not yet written
(shards are written as they finish, each atomically). A new key (a config change) starts an empty folder; the
``KEEP`` most recently used keys are kept (switching a config back costs nothing), older ones are removed. The
folder is not a DVC output (and .dvcignore hides it): like DVC's own cache it only saves work.

    store = EmbeddingStore(Path("cache/mpnet/embeddings"), key)
    todo = store.missing(hashes)          # unique hashes not stored yet, in first-seen order
    store.add(todo[:512], emb, "bf16")    # one part
    X = store.get(hashes)                 # (n, d) float32
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from stack import cache
from stack.errors import StackError
from stack.schema import emb_cols

HASH = "text_hash"
KEEP = 3  # keys (configs) whose embeddings are kept


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


class EmbeddingStore:
    def __init__(self, root: Path, key: str):
        self.root, self.key, self.dir = Path(root), key, Path(root) / key
        self.parts: list[np.ndarray] = []
        self.index: dict[str, tuple[int, int]] = {}  # hash -> (part, row)
        self.precision: str | None = None
        self.n_states: int | None = None  # hidden states of the backbone (the embedding's layer blocks)
        if self.dir.is_dir():
            os.utime(self.dir)  # used now: the most recent key
        for tmp in self.dir.glob(".part-*.tmp-*") if self.dir.is_dir() else []:  # a killed write's leftovers
            tmp.unlink(missing_ok=True)
        for path in sorted(self.dir.glob("part-*.parquet")) if self.dir.is_dir() else []:
            try:
                df, meta = cache.read_table(path, "it is recomputed")
            except StackError:  # a foreign or unreadable file: its essays are simply embedded again
                continue
            if meta.get("key") != key or HASH not in df.columns:
                continue
            self._take(df[HASH].tolist(), df[cache.emb_columns(df)].to_numpy(np.float32))
            self.precision = self.precision or meta.get("precision")
            self.n_states = self.n_states or meta.get("n_states")

    def _take(self, hashes: list[str], emb: np.ndarray) -> None:
        k = len(self.parts)
        self.parts.append(emb)
        self.index.update({h: (k, r) for r, h in enumerate(hashes)})

    def __len__(self) -> int:
        return len(self.index)

    def missing(self, hashes: list[str]) -> list[str]:
        return [h for h in dict.fromkeys(hashes) if h not in self.index]

    def add(self, hashes: list[str], emb: np.ndarray, precision: str, n_states: int | None = None) -> None:
        """Store one shard: ``hashes`` (n,) and ``emb`` ``(n, d)``, written atomically as a new part."""
        if not self.parts and self.root.is_dir():  # a new key: keep the most recently used others
            others = sorted((p for p in self.root.iterdir() if p.is_dir() and p.name != self.key),
                            key=lambda p: p.stat().st_mtime, reverse=True)
            for old in others[KEEP - 1:]:
                shutil.rmtree(old, ignore_errors=True)
        self.precision = self.precision or precision
        self.n_states = self.n_states or n_states
        df = pd.concat([pd.DataFrame({HASH: list(hashes)}), pd.DataFrame(np.asarray(emb, np.float32),
                                                                          columns=emb_cols(emb.shape[1]))], axis=1)
        taken = [int(p.stem.split("-")[1]) for p in self.dir.glob("part-*.parquet")] if self.dir.is_dir() else []
        n = max(taken, default=-1) + 1
        cache.write_table(df, self.dir / f"part-{n:05d}.parquet", {"key": self.key, "precision": self.precision,
                                                                          "n_states": self.n_states})
        self._take(list(hashes), np.asarray(emb, np.float32))

    def get(self, hashes: list[str]) -> np.ndarray:
        """Embeddings ``(len(hashes), d)`` float32 of stored essays, in the order given."""
        if not hashes:
            return np.empty((0, self.parts[0].shape[1] if self.parts else 0), np.float32)
        where = [self.index[h] for h in hashes]
        out = np.empty((len(hashes), self.parts[0].shape[1]), np.float32)
        for k, part in enumerate(self.parts):
            sel = [i for i, (p, _) in enumerate(where) if p == k]
            if sel:
                out[sel] = part[[where[i][1] for i in sel]]
        return out
