"""Frozen configuration for every stage: ``params.yaml`` + ``configs/models/<name>.yaml`` + ``--set`` overrides.

One source of defaults (the dataclasses below); unknown keys and wrong types are errors, never ignored.

    from stack.config import load_params, load_model_config
    params = load_params()                      # params.yaml
    cfg = load_model_config("minilm", ["batch_size=16"])
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

from stack import paths
from stack.errors import StackError

PARAMS = Path("params.yaml")
DEBUG_ROWS = 48
_SCIENTIFIC = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")
DEBUG_FOLDS = 2


@dataclass(frozen=True)
class DataConfig:
    train: str = "data/fb3/train.csv"
    test: str = "data/fb3/test.csv"
    sample_submission: str = "data/fb3/sample_submission.csv"


@dataclass(frozen=True)
class FoldsConfig:
    n_folds: int = 5
    seed: int = 42


@dataclass(frozen=True)
class EmbedConfig:
    models: tuple[str, ...] = ("minilm",)


@dataclass(frozen=True)
class BlendConfig:
    models: tuple[str, ...] = ("minilm",)
    method: str = "ridge"  # the blend written to submission.csv
    features: str = "emb"  # emb | preds (both only for method stack: one blender must not see both)
    compare: tuple[str, ...] = ("ridge", "hill", "nelder-mead", "stack")  # also scored, for metrics/cv.json
    negative: bool = False  # hill / nelder-mead may give a model a negative weight
    bounds: tuple[float, ...] | None = None  # nelder-mead weight bounds [low, high]
    svr_scaling: str = "standard"  # standard | l2
    round: bool = False  # try rounding to the 0.5 grid; applied only if nested CV improves
    lgbm_n_jobs: int = 2


@dataclass(frozen=True)
class TrainStageConfig:
    models: tuple[str, ...] = ()  # each has configs/train/<name>.yaml; DVC runs train@<name> for each


@dataclass(frozen=True)
class Params:
    debug: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    folds: FoldsConfig = field(default_factory=FoldsConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    train: TrainStageConfig = field(default_factory=TrainStageConfig)
    blend: BlendConfig = field(default_factory=BlendConfig)


@dataclass(frozen=True)
class ModelConfig:
    """One backbone variant and how stage one uses it (see configs/models/*.yaml; other kinds: stack.member)."""

    name: str = ""
    kind: str = "backbone"  # backbone here; tfidf / features configs are read by stack.textfeatures
    backbone: str = ""  # hub id; used when no local or packaged copy exists
    packaged: str | None = None  # "<python package>/<folder>" or "<glob>/<name>.zip" (split into .zip.001, ...)
    path: str | None = None  # local folder with config.json + weights: wins over everything
    max_len: int = 512
    stride: int = 64  # tokens shared by consecutive chunks of a long essay
    truncate: bool = False  # True: only the first max_len tokens of each essay
    pooling: tuple[str, ...] = ("mean",)  # one or more of stack.backbones.pooling.POOLINGS, concatenated
    layers: tuple[int, ...] = (-1,)  # hidden-state indices: 0 = embeddings, -1 = last layer; [] = all
    layer_mode: str = "concat"  # concat: layers side by side | mean: average them | weighted: layer_weights
    layer_weights: tuple[float, ...] = ()  # layer_mode weighted: one fixed weight per entry of layers
    batch_size: int = 32
    dtype: str = "auto"  # auto (bf16 / fp16 if it matches fp32 on a sample) | bf16 | fp16 (CUDA) | fp32
    device: str = "auto"  # auto (CUDA when there is one) | cpu | cuda | cuda:<k>
    threads: int = 0  # intra-op threads on the CPU; 0 = every core this process may use
    shard_size: int = 512  # essays per streamed shard (memory bound, resume granularity)
    head_alphas: tuple[float, ...] = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0)

    def fingerprint(self) -> str:
        return sha256_json(dataclasses.asdict(self))


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
    """Dataclass ``cls`` from a mapping; unknown keys and wrong types raise StackError naming ``where``."""
    raw = raw or {}
    if not isinstance(raw, dict):
        raise StackError(f"{where}: expected a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
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
    """``["batch_size=16", "layers=[-1,-2]"]`` -> ``{"batch_size": 16, "layers": [-1, -2]}`` (values are YAML)."""
    out = {}
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise StackError(f"override {item!r} must look like key=value")
        out[key.strip()] = yaml.safe_load(value)
    return out


def load_params(path: Path = PARAMS) -> Params:
    return build(Params, read_yaml(path), str(path))


def read_named(path: Path, name: str, overrides: list[str] | None, what: str) -> dict:
    """The mapping in ``configs/<...>/<name>.yaml`` with ``key=value`` overrides on top and ``name`` set;
    a missing file lists the known names (``what``: "model", "training config")."""
    if not path.exists():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise StackError(f"unknown {what} {name!r}: no {path} (known {what}s: {', '.join(known) or 'none'})")
    raw = read_yaml(path)
    raw.update(parse_overrides(overrides))
    raw.setdefault("name", name)
    return raw


def load_model_config(name: str, overrides: list[str] | None = None) -> ModelConfig:
    """Read ``configs/models/<name>.yaml``; ``overrides`` are ``key=value`` strings applied on top."""
    path = paths.model_config(name)
    return build(ModelConfig, read_named(path, name, overrides, "model"), str(path))
