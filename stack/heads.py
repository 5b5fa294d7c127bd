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
from stack.errors import StackError


def heads_file(name: str) -> Path:
    return paths.model_dir(name) / "heads.joblib"


def save_heads(name: str, heads: list, meta: dict) -> Path:
    """Dump the fold heads (each maps features ``(n, d)`` -> ``(n, 6)``) and ``meta`` atomically."""
    from stack.cache import atomic_write

    return atomic_write(heads_file(name), lambda p: joblib.dump({"heads": heads, "meta": meta}, p))


def load_heads(name: str) -> tuple[list, dict]:
    path = heads_file(name)
    if not path.is_file():
        raise StackError(f"{path}: no saved heads for model {name!r}; run `stack embed {name}` (or `dvc repro`)")
    try:
        saved = joblib.load(path)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same thing to a person
        raise StackError(f"{path}: unreadable ({type(e).__name__}); delete it and run `stack embed {name}`") from None
    return saved["heads"], saved["meta"]


def predict_heads(heads: list, X) -> np.ndarray:
    """Mean of the fold heads' predictions ``(n, 6)``, as for the test set in stage one."""
    return np.mean([h.predict(X) for h in heads], axis=0)
