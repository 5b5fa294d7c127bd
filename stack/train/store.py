"""Fold artifacts of fine-tuning under ``<member folder>/fold<k>/`` (``models/<name>/`` in the project, a
bundle's ``members/<name>/``): weights, outputs, resolved config.

``model.safetensors`` (all Regressor weights), ``config.json`` (resolved config, history), and last
``outputs.safetensors`` (validation/test predictions and features, with the essay ids and the fold hash in
its metadata): a fold is finished exactly when ``outputs.safetensors`` exists with the current hash.
Every file is written to a temp name and renamed; only safetensors, never pickles.

    save_fold(folder, 0, model, outputs, config, fold_hash)
    out = load_outputs(folder, 0, fold_hash)     # None unless finished with this hash
    load_weights(model, folder, 0)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

from stack.cache import atomic_write

WEIGHTS, OUTPUTS, CONFIG = "model.safetensors", "outputs.safetensors", "config.json"
ARRAYS = ("valid_pred", "valid_feats", "test_pred", "test_feats")


def fold_dir(member_folder: Path, fold: int) -> Path:
    return Path(member_folder) / f"fold{fold}"


def save_fold(member_folder: Path, fold: int, model, outputs: dict, config: dict, fold_hash: str) -> Path:
    """``outputs``: the four ARRAYS (float32, ``(n, k)`` / ``(n, d)``) plus ``valid_ids`` and ``test_ids`` lists."""
    folder = fold_dir(member_folder, fold)
    (folder / OUTPUTS).unlink(missing_ok=True)  # not finished until the new outputs land
    atomic_write(folder / WEIGHTS, lambda p: save_model(model, str(p)))
    atomic_write(folder / CONFIG, lambda p: p.write_text(json.dumps({**config, "hash": fold_hash}, indent=2, sort_keys=True, default=str)))
    tensors = {k: torch.from_numpy(np.ascontiguousarray(outputs[k], dtype=np.float32)) for k in ARRAYS}
    meta = {"hash": fold_hash, "valid_ids": json.dumps(list(outputs["valid_ids"])),
            "test_ids": json.dumps(list(outputs["test_ids"]))}
    atomic_write(folder / OUTPUTS, lambda p: save_file(tensors, str(p), metadata=meta))
    return folder


def load_outputs(member_folder: Path, fold: int, fold_hash: str) -> dict | None:
    """The fold's outputs (numpy arrays + id lists) if it finished with ``fold_hash``, else None."""
    path = fold_dir(member_folder, fold) / OUTPUTS
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if meta.get("hash") != fold_hash:
            return None
        arrays = load_file(str(path))
    except (SafetensorError, OSError, json.JSONDecodeError):
        return None
    out = {k: arrays[k].numpy() for k in ARRAYS}
    out["valid_ids"], out["test_ids"] = json.loads(meta["valid_ids"]), json.loads(meta["test_ids"])
    return out


def n_outputs(member_folder: Path, fold: int, hint: str) -> int:
    """How many targets fold ``fold``'s saved head predicts (the rows of ``head.weight``), read from the file's
    header without loading the weights."""
    from safetensors import safe_open

    from stack.errors import StackError

    path = fold_dir(member_folder, fold) / WEIGHTS
    if not path.is_file():
        raise StackError(f"{path}: not found; {hint}")
    try:
        with safe_open(str(path), "pt") as f:
            return int(f.get_slice("head.weight").get_shape()[0])
    except (SafetensorError, OSError, KeyError, IndexError) as e:
        raise StackError(f"{path}: unreadable or not a fine-tuned member's weights ({str(e)[:80]}); {hint}") from None


def load_weights(model, member_folder: Path, fold: int, hint: str):
    """Load fold ``fold``'s saved weights into ``model`` (a Regressor of the same architecture); -> model."""
    from stack.errors import StackError

    path = fold_dir(member_folder, fold) / WEIGHTS
    if not path.is_file():
        raise StackError(f"{path}: not found; {hint}")
    try:
        load_model(model, str(path))
    except (SafetensorError, OSError, RuntimeError) as e:
        raise StackError(f"{path}: unreadable or not this model's weights ({str(e).splitlines()[0][:80]}); {hint}") from None
    return model.eval()
