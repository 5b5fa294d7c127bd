"""Saved heads of frozen stage-one members: the fitted per-fold heads that produced a model's cache.

joblib is read only from ``models/<name>/heads.joblib``, a path this project builds and writes itself.

    save_heads("minilm", fold_models, meta)          # meta: the cache fingerprint (config hash, config_json, kind)
    heads, meta = load_heads("minilm")
"""

from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np

from stack import paths


def heads_file(name: str) -> Path:
    return paths.model_dir(name) / "heads.joblib"


def save_heads(name: str, heads: list, meta: dict) -> Path:
    """Dump the fold heads (each maps features ``(n, d)`` -> ``(n, 6)``) and ``meta`` atomically."""
    from stack.cache import atomic_write

    return atomic_write(heads_file(name), lambda p: joblib.dump({"heads": heads, "meta": meta}, p))


def load_heads(name: str) -> tuple[list, dict]:
    from stack.cache import read_own_joblib

    saved = read_own_joblib(heads_file(name), f"run `stack embed {name}` (or `dvc repro`)")
    return saved["heads"], saved["meta"]


def predict_heads(heads: list, X) -> np.ndarray:
    """Mean of the fold heads' predictions ``(n, 6)``, as for the test set in stage one."""
    return np.mean([h.predict(X) for h in heads], axis=0)
