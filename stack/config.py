"""Config machinery shared by every stage, and the params every stage reads (``debug``, ``data``, ``task``,
``folds``, ``members``). Each stage's own keys live with the stage: the task in ``stack.task``, member kinds in
``stack.members``, backbones in ``stack.backbones.config``, stage two in ``stack.blend.config`` -- so editing one
stage's defaults reruns only it.

One source of defaults (dataclasses); unknown keys and wrong types are errors that name the file and key.

    from stack.config import load_params, build, parse_overrides
    params = load_params()                          # params.yaml (params.source: the file, for messages)
    cfg = build(MyConfig, {"batch_size": 16}, "configs/members/x.yaml")
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from stack import renamed
from stack.errors import StackError

PARAMS = Path("params.yaml")
DEBUG_ROWS, DEBUG_FOLDS = 48, 2
_SCIENTIFIC = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")
INTERNAL = {"internal": True}  # a field the program sets, never a key of the file


@dataclass(frozen=True)
class DataConfig:
    train: str = "data/fb3/train.csv"
    test: str = "data/fb3/test.csv"
    sample_submission: str | None = "data/fb3/sample_submission.csv"  # None: the submission's rows follow test.csv


@dataclass(frozen=True)
class FoldsConfig:
    n_folds: int = 5
    seed: int = 42
    group: str | None = None  # a training-data column: no group (e.g. prompt) in two folds


@dataclass(frozen=True)
class Params:
    """params.yaml; its defaults are the default run's. ``task`` and ``blend`` stay raw mappings here:
    ``stack.task`` and ``stack.blend.config`` own and check their keys."""

    debug: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    task: dict | None = None  # None: FB3 (stack.task)
    folds: FoldsConfig = field(default_factory=FoldsConfig)
    members: tuple[str, ...] = ("mpnet", "features")  # each has configs/members/<name>.yaml; DVC runs fit@<name>
    # {name: input}: heads over another member's cache; DVC runs head@<name> after fit@<input>
    heads: dict | None = field(default_factory=lambda: {"mpnet-krr": "mpnet", "mpnet-mlp": "mpnet",
                                                        "mpnet-lgbm": "mpnet"})
    blend: dict | None = None
    source: str = field(default=str(PARAMS), metadata=INTERNAL)  # the file read, for messages

    def all_members(self) -> list[str]:
        """Every stage-one member: ``members``, then ``heads``."""
        return [*self.members, *(self.heads or {})]


def sha256_json(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _coerce(value, tp, where: str):
    """Check ``value`` against the annotation ``tp``; lists become tuples, ints may stand for floats."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (tp,) = [a for a in args if a is not type(None)]
        origin = typing.get_origin(tp)
    if origin is tuple:
        (item_tp, _) = typing.get_args(tp)
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list | tuple):
            raise StackError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(v, item_tp, where) for v in value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
        return float(value)  # YAML 1.1 reads 1e-5 (no dot) as a string; people mean a float
    if isinstance(value, bool) != (tp is bool) or not isinstance(value, tp):
        raise StackError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def build(cls, raw: dict | None, where: str):
    """Dataclass ``cls`` from a mapping; unknown keys and wrong types raise StackError naming ``where``; a key
    that was renamed (stack.renamed.KEYS) gets its new name."""
    raw = raw or {}
    if not isinstance(raw, dict):
        raise StackError(f"{where}: expected a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls) if not f.metadata.get("internal")}
    unknown = sorted(set(raw) - known)
    if unknown:
        hint = renamed.KEYS.get(cls.__name__, {}).get(unknown[0])
        if hint:
            raise StackError(f"{where}: key {unknown[0]!r} is now {hint}")
        raise StackError(f"{where}: unknown key {unknown[0]!r} (valid keys: {', '.join(sorted(known))})")
    kwargs = {}
    for name, value in raw.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = build(tp, value, f"{where}: {name}")
        else:
            kwargs[name] = _coerce(value, tp, f"{where}: key {name!r}")
    return cls(**kwargs)


def read_yaml(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except FileNotFoundError:
        raise StackError(f"{path}: file not found") from None
    except yaml.YAMLError as e:
        raise StackError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    return raw or {}


def parse_overrides(overrides: list[str] | None) -> dict:
    """``["batch_size=16", "layers=[-1,-2]"]`` -> ``{"batch_size": 16, "layers": [-1, -2]}`` (values are YAML;
    dotted keys such as ``backbone.path`` are kept as they are for the caller to route)."""
    out = {}
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise StackError(f"override {item!r} must look like key=value")
        out[key.strip()] = yaml.safe_load(value)
    return out


def load_params(path: Path = PARAMS) -> Params:
    """params.yaml (or the file ``--params`` names), every key checked; the task is checked too (stack.task)."""
    from stack.task import build_task

    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise StackError(f"{path}: expected a mapping of sections, got {raw!r}")
    old = [k for k in renamed.SECTIONS if k in raw]
    if old:
        raise StackError(f"{path}: section {old[0]!r} was renamed: {renamed.SECTIONS[old[0]]}")
    params = dataclasses.replace(build(Params, raw, str(path)), source=str(path))
    for name, source in (params.heads or {}).items():
        if not isinstance(name, str) or not isinstance(source, str):
            raise StackError(f"{path}: heads: expected `name: input member` pairs, got {name!r}: {source!r}")
    build_task(params.task, str(path))
    return params


def known_names(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.yaml"))


def asdict(cfg) -> dict:
    """A config dataclass as a JSON-able dict (tuples become lists, as they read back from YAML)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))
