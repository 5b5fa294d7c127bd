"""The member registry: each kind is a class registered where it is defined, and a member is one
``configs/members/<name>.yaml``: its ``kind``, the ``backbone`` it uses (kinds with a transformer) and its kind's
keys, checked against the kind's config dataclass (unknown keys and wrong types are one-line errors).

    spec = load_member("mpnet", ["batch_size=8", "backbone.path=/data/mpnet"])
    spec.kind.fit(spec, ctx, folder)          # -> Fitted: OOF/test predictions (+ embeddings)
    spec.kind.scorer(spec, folder, meta)      # -> scores new essays from what fit saved in ``folder``
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from stack import paths, renamed
from stack.backbones.config import BackboneConfig, load_backbone_config
from stack.config import asdict, build, known_names, parse_overrides, read_yaml, sha256_json
from stack.errors import StackError

KINDS: dict[str, Kind] = {}


def register(cls):
    """Class decorator: one instance of the kind, under ``cls.name``."""
    if cls.name in KINDS:
        raise ValueError(f"member kind {cls.name!r} registered twice")
    KINDS[cls.name] = cls()
    return cls


def get_kind(name: str, where: str = "") -> Kind:
    if name not in KINDS:
        raise StackError(f"{where or 'member'}: unknown kind {name!r} (valid: {', '.join(sorted(KINDS))})")
    return KINDS[name]


@dataclass
class Fitted:
    """What a kind's ``fit`` returns; ``oof`` is None while folds are still pending (a fine-tuned member)."""

    oof: np.ndarray | None  # (n_train, k) out-of-fold predictions of the task's k targets
    test: np.ndarray | None  # (n_test, k) mean of the fold heads/models
    emb: np.ndarray | None = None  # (n_train, d) embeddings written as emb_* columns
    emb_test: np.ndarray | None = None
    extra: dict = field(default_factory=dict)  # added to the member's meta (head alphas, precision, ...)
    info: dict = field(default_factory=dict)  # what the CLI prints (essays embedded, peak memory, ...)
    pending: list[int] = field(default_factory=list)


class Kind:
    """A kind of stage-one member. Subclasses set ``name`` and ``config`` (a frozen dataclass with ``name`` and
    ``kind`` fields; ``RUN_KEYS`` names keys that do not change the outputs) and implement ``fit``/``scorer``."""

    name: ClassVar[str] = ""
    config: ClassVar[type] = object
    uses_backbone: ClassVar[bool] = False
    distributed: ClassVar[bool] = False  # fits under torchrun (DDP); others run in one process

    def check(self, spec: MemberSpec) -> None:
        """Value checks the types cannot express, before any data or weights load (StackError naming the key)."""

    def fit(self, spec: MemberSpec, ctx, folder: Path) -> Fitted:
        raise NotImplementedError

    def inputs(self, spec: MemberSpec) -> list[str]:
        """Members whose outputs this one reads (a head over another member's embeddings); scored first."""
        return []

    def scorer(self, spec: MemberSpec, folder: Path, meta: dict, strict: bool = False):
        """-> ``score(texts, upstream) -> (predictions (n, k), embeddings (n, d) or None)`` from what ``fit`` saved
        in ``folder`` (``meta``: its member.json, read once by the caller); ``upstream``: {member: embeddings} of
        ``inputs``; ``strict``: load weights from safetensors only (scoring from a bundle)."""
        raise NotImplementedError

    def export(self, spec: MemberSpec, meta: dict, src: Path, dst: Path, keep_folds: bool, by_reference: bool) -> dict:
        """Write what scoring needs from ``src`` (models/<name>/, whose member.json is ``meta``) into ``dst`` (a
        bundle's members/<name>/), as safetensors + JSON only; -> changes to the saved backbone config (e.g. its
        weights now in ``dst``)."""
        raise NotImplementedError


@dataclass(frozen=True)
class MemberSpec:
    name: str
    kind: Kind
    cfg: Any  # the kind's config dataclass
    backbone: BackboneConfig | None
    where: str  # the config file, for messages

    def config_json(self) -> dict:
        return {"member": asdict(self.cfg), "backbone": asdict(self.backbone) if self.backbone else None}

    def fingerprint(self) -> str:
        """Hash of everything that decides the member's outputs (run-only keys such as threads excluded)."""
        member = {k: v for k, v in asdict(self.cfg).items() if k not in getattr(self.cfg, "RUN_KEYS", ()) + ("name",)}
        return sha256_json({"member": member, "backbone": self.backbone.source() if self.backbone else None})


def check_transformer(spec: MemberSpec) -> None:
    """What every transformer member checks before any weights load: its device and precision on this machine, and
    ``max_len`` against its backbone's positions."""
    from stack import runtime

    cfg = spec.cfg
    runtime.precision(cfg.precision, runtime.device(cfg.device, spec.where), spec.where)
    limit = spec.backbone.max_positions
    if limit is not None and cfg.max_len > limit:
        raise StackError(f"{spec.where}: max_len {cfg.max_len} exceeds the {limit} positions of backbone "
                         f"{spec.backbone.name!r}; set max_len <= {limit}")


def _missing(name: str, path: Path) -> StackError:
    for old, what in renamed.CONFIG_DIRS.items():
        if (old / f"{name}.yaml").is_file():
            return StackError(f"{old / (name + '.yaml')} uses the old layout: {what} now live in configs/members/ "
                              f"(kind + backbone name) and configs/backbones/ (where weights come from); see README")
    return StackError(f"unknown member {name!r}: no {path} (known members: "
                      f"{', '.join(known_names(paths.MEMBER_CONFIGS)) or 'none'})")


def build_spec(name: str, raw: dict, where: str, backbone_overrides: dict | None = None) -> MemberSpec:
    """A MemberSpec from a member mapping (a YAML file's, or a saved member.json's ``member`` part)."""
    if "kind" not in raw:
        raise StackError(f"{where}: no `kind` key (valid kinds: {', '.join(sorted(KINDS))})")
    kind = get_kind(raw["kind"], where)
    raw = {**raw, "name": raw.get("name") or name}
    backbone = None
    if kind.uses_backbone:
        ref = raw.get("backbone")
        if isinstance(ref, BackboneConfig):  # a saved member.json's, already resolved
            backbone, raw["backbone"] = ref, ref.name
        elif isinstance(ref, dict):  # inline keys: the backbone is named after the member
            backbone, raw["backbone"] = load_backbone_config({"name": name, **ref}, backbone_overrides, where), name
        elif isinstance(ref, str) and ref:
            backbone = load_backbone_config(ref, backbone_overrides, where)
        else:
            raise StackError(f"{where}: no `backbone` key: name one under configs/backbones/ or give {{path: DIR}}")
    cfg = build(kind.config, raw, where)
    spec = MemberSpec(name, kind, cfg, backbone, where)
    kind.check(spec)
    return spec


def load_member(name: str, overrides: list[str] | None = None) -> MemberSpec:
    """``configs/members/<name>.yaml`` with ``key=value`` overrides (``backbone.<key>=...`` for its backbone)."""
    path = paths.member_config(name)
    if not path.is_file():
        raise _missing(name, path)
    raw = read_yaml(path)
    over = parse_overrides(overrides)
    backbone_over = {k.split(".", 1)[1]: v for k, v in over.items() if k.startswith("backbone.")}
    raw.update({k: v for k, v in over.items() if not k.startswith("backbone.")})
    if backbone_over and not isinstance(raw.get("backbone"), str | dict):
        raise StackError(f"{path}: --set backbone.<key> needs a member with a backbone")
    return build_spec(name, raw, str(path), backbone_over)


def spec_from_json(config_json: dict, folder: Path, where: str, strict: bool = False) -> MemberSpec:
    """The MemberSpec saved in ``member.json``; a relative backbone ``path`` is looked up beside it first.
    ``strict`` (a bundle): the weights must be inside ``folder`` or in an installed package, never the hub."""
    from stack.runtime import for_scoring

    member, bb = for_scoring(dict(config_json["member"])), config_json.get("backbone")
    backbone = None
    if bb is not None:
        backbone = build(BackboneConfig, bb, where)
        local = folder / backbone.path if backbone.path and not Path(backbone.path).is_absolute() else None
        if local is not None and (local / "config.json").is_file():
            backbone = dataclasses.replace(backbone, path=str(local))
        if strict:
            inside = local is not None and local.resolve().is_relative_to(Path(folder).resolve())
            if backbone.path and not inside:
                raise StackError(f"{where}: backbone path {backbone.path!r} is outside the bundle; re-export it")
            backbone = dataclasses.replace(backbone, hub="")  # a bundle never downloads
        member["backbone"] = backbone
    return build_spec(member.get("name", folder.name), member, where)
