"""Find and load a backbone: explicit local folder -> packaged weights -> Hugging Face hub.

An unavailable model fails fast with one line saying how to provide the weights.

    from stack.backbones.loading import load_backbone
    tokenizer, model = load_backbone(cfg)          # cfg: stack.config.ModelConfig
"""

from __future__ import annotations

import importlib.util
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from stack.errors import StackError


def _how_to_provide(cfg) -> str:
    hub = cfg.backbone or "<hub id>"
    return (
        f"on a machine with internet run `hf download {hub} --local-dir DIR`, copy DIR here, then set "
        f"`path: DIR` in configs/models/{cfg.name}.yaml or pass `--set path=DIR`"
    )


def packaged_folder(spec: str) -> Path | None:
    """``"pkg/sub/folder"`` -> that folder inside the installed package ``pkg``, or None if not installed."""
    pkg, _, sub = spec.partition("/")
    found = importlib.util.find_spec(pkg)
    if found is None or not found.submodule_search_locations:
        return None
    folder = Path(list(found.submodule_search_locations)[0]) / sub
    return folder if (folder / "config.json").is_file() else None


def resolve_source(cfg) -> tuple[str, bool]:
    """(folder or hub id, is_local) for a model config, in the resolution order above."""
    if cfg.path:
        folder = Path(cfg.path).expanduser()
        if not (folder / "config.json").is_file():
            raise StackError(
                f"configs/models/{cfg.name}.yaml: path {str(folder)!r} has no config.json; "
                "point it at a folder written by save_pretrained (config.json, tokenizer, weights)"
            )
        return str(folder), True
    if cfg.packaged:
        folder = packaged_folder(cfg.packaged)
        if folder is not None:
            return str(folder), True
    if cfg.backbone:
        return cfg.backbone, False
    raise StackError(f"configs/models/{cfg.name}.yaml: set `path` (local folder), `packaged` or `backbone` (hub id)")


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def load_backbone(cfg, **model_kwargs):
    """(tokenizer, AutoModel) for ``cfg``; hub ids are read from the local HF cache first."""
    from transformers import AutoModel, AutoTokenizer

    source, local = resolve_source(cfg)
    attempts = [True] if local else [True, False]
    last = None
    for local_only in attempts:
        if not local_only and not _hub_reachable():
            raise StackError(f"model {cfg.name!r}: weights for {source!r} are not on this machine and the hub is unreachable; {_how_to_provide(cfg)}")
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
            model = AutoModel.from_pretrained(source, local_files_only=local_only, **model_kwargs)
            return tokenizer, model
        except (OSError, ValueError) as e:
            last = e
            if local:
                raise StackError(f"model {cfg.name!r}: cannot load {source} ({str(e).splitlines()[0][:120]}); {_how_to_provide(cfg)}") from None
    raise StackError(f"model {cfg.name!r}: cannot load {source!r} ({str(last).splitlines()[0][:120]}); {_how_to_provide(cfg)}")
