"""Backbones: where a transformer's weights come from, and the model's facts (``configs/backbones/<name>.yaml``).

Resolution order: ``path`` (a local save_pretrained folder) -> ``packaged`` (weights shipped inside an installed
Python package) -> the local Hugging Face cache -> the hub (``hub`` id). Members name a backbone by file name
(``backbone: deberta-v3-base``) or give its keys inline (``backbone: {path: /data/my-model}``); ``--set
backbone.path=DIR`` overrides one key for one run.

    from stack.backbones.config import load_backbone_config
    bb = load_backbone_config("deberta-v3-base", {"path": "/kaggle/input/deberta-v3-base"})
"""

from __future__ import annotations

from dataclasses import dataclass

from stack import paths
from stack.config import build, known_names, read_yaml
from stack.errors import StackError


@dataclass(frozen=True)
class BackboneConfig:
    name: str = ""
    hub: str = ""  # Hugging Face hub id, used when no local or packaged copy exists
    packaged: str | None = None  # "<python package>/<folder>" or "<glob>/<name>.zip" (split into .zip.001, ...)
    path: str | None = None  # local folder with config.json, tokenizer and weights: wins over everything
    max_positions: int | None = None  # longest input in tokens incl. specials; None: no absolute position table

    def source(self) -> dict:
        """What decides the weights (the member fingerprints hash it)."""
        return {"hub": self.hub, "packaged": self.packaged, "path": self.path}

    @property
    def where(self) -> str:
        return str(paths.backbone_config(self.name)) if self.name else "backbone"


def load_backbone_config(ref: str | dict, overrides: dict | None = None, where: str = "") -> BackboneConfig:
    """``ref``: a name under configs/backbones/ or an inline mapping (named after the member, ``where``)."""
    if isinstance(ref, dict):
        raw, origin = dict(ref), where
    else:
        path = paths.backbone_config(ref)
        if not path.is_file():
            known = ", ".join(known_names(paths.BACKBONE_CONFIGS)) or "none"
            raise StackError(f"{where}: unknown backbone {ref!r}: no {path} (known backbones: {known})")
        raw, origin = read_yaml(path), str(path)
        raw.setdefault("name", ref)
    raw.update(overrides or {})
    return build(BackboneConfig, raw, origin)
