"""Streamed, resumable stage-one output: essays are embedded shard by shard, each shard written as it finishes.

A shard is a Parquet file ``cache/<model>/shards/shard_<k>.parquet`` (``text_id`` + ``emb_*``) written through
``stack.cache`` with a key in its metadata: the hash of the model config, the essays and the dtype. A rerun with
the same key reuses finished shards, so an interrupted ``stack embed`` continues from the last finished shard and
ends with byte-identical cache files; a different key starts over. The folder is removed once the model's cache
is written.

    store = ShardStore("minilm", key="ab12...")
    emb = store.load(0, ids)            # (n, d) float32 or None
    store.save(0, ids, emb)
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from stack import cache, paths
from stack.schema import ID, emb_cols


def shard_dir(name: str) -> Path:
    return paths.model_cache(name) / "shards"


class ShardStore:
    """Finished shards of one run of model ``name``; ``key`` identifies what they were computed from."""

    def __init__(self, name: str, key: str):
        self.name, self.key, self.folder = name, key, shard_dir(name)

    def path(self, k: int) -> Path:
        return self.folder / f"shard_{k:05d}.parquet"

    def load(self, k: int, ids: list[str]) -> np.ndarray | None:
        """Embeddings ``(len(ids), d)`` of shard ``k`` if it was finished with this key and these essays."""
        path = self.path(k)
        if not path.is_file():
            return None
        try:
            df, meta = cache.read_table(path, "it will be recomputed")
        except Exception:  # a half-written or foreign file is simply recomputed
            return None
        if meta.get("key") != self.key or df[ID].tolist() != list(ids):
            return None
        return df[cache.emb_columns(df)].to_numpy(np.float32)

    def save(self, k: int, ids: list[str], emb: np.ndarray) -> None:
        """Write shard ``k`` atomically: ``ids`` (n,) and ``emb`` ``(n, d)`` float32."""
        df = pd.concat([pd.DataFrame({ID: list(ids)}), pd.DataFrame(emb.astype(np.float32), columns=emb_cols(emb.shape[1]))], axis=1)
        cache.write_table(df, self.path(k), {"key": self.key, "model": self.name, "shard": k})

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
