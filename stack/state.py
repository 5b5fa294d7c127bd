"""Fitted estimators as arrays + JSON, never pickle: a saved model is data a stranger's file cannot run.

A class that can be saved is registered with ``@savable`` and implements ``to_state() -> dict`` and
``from_state(state) -> obj``. A state is a tree of JSON values, numpy arrays and other savable objects; ``save``
writes the tree to ``<stem>.json`` and the arrays to ``<stem>.safetensors``; ``load`` rebuilds only registered
classes (nothing is imported by name), so a tampered file can at worst fail to load. Lists of strings (TF-IDF
vocabularies) are stored as one UTF-8 byte array with offsets (``pack_strings``).

    save([head0, head1], Path("models/minilm/heads"))      # heads.json + heads.safetensors
    heads = load(Path("models/minilm/heads"))
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from stack.errors import StackError

FORMAT = "stack-state/1"
CLASSES: dict[str, type] = {}


def savable(cls):
    """Register ``cls`` (it defines ``to_state`` and the classmethod ``from_state``) under its class name."""
    if CLASSES.get(cls.__name__, cls) is not cls:
        raise ValueError(f"two savable classes are named {cls.__name__!r}")
    CLASSES[cls.__name__] = cls
    return cls


def pack_strings(items: list[str]) -> dict:
    """A list of strings as arrays: UTF-8 bytes ``(total,)`` uint8 and end offsets ``(n,)`` int64."""
    encoded = [s.encode("utf-8") for s in items]
    blob = np.frombuffer(b"".join(encoded), dtype=np.uint8) if encoded else np.zeros(0, np.uint8)
    return {"utf8": blob.copy(), "ends": np.cumsum([len(b) for b in encoded], dtype=np.int64)}


def unpack_strings(packed: dict) -> list[str]:
    blob, ends = bytes(np.asarray(packed["utf8"], np.uint8)), np.asarray(packed["ends"], np.int64)
    starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
    return [blob[s:e].decode("utf-8") for s, e in zip(starts, ends)]


def _encode(value, arrays: dict, where: str):
    if isinstance(value, np.ndarray):
        key = f"a{len(arrays)}"
        arrays[key] = np.ascontiguousarray(value)
        return {"__array__": key}
    if isinstance(value, np.generic):
        return value.item()
    if type(value).__name__ in CLASSES and CLASSES[type(value).__name__] is type(value):
        return {"__class__": type(value).__name__, "state": _encode(value.to_state(), arrays, where)}
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"{where}: state keys must be strings, got {list(value)[:3]}")
        return {k: _encode(v, arrays, where) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(v, arrays, where) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"{where}: cannot save a {type(value).__name__} (register it with @stack.state.savable)")


def _decode(node, arrays, where: tuple[Path, Path], hint: str):
    if isinstance(node, list):
        return [_decode(v, arrays, where, hint) for v in node]
    if not isinstance(node, dict):
        return node
    if "__array__" in node:
        if node["__array__"] not in arrays:
            raise StackError(f"{where[1]}: array {node['__array__']!r} named in {where[0].name} is missing; {hint}")
        return arrays[node["__array__"]]
    if "__class__" in node:
        cls = CLASSES.get(node["__class__"])
        if cls is None:
            raise StackError(f"{where[0]}: unknown class {node['__class__']!r} (written by another version of stack?); {hint}")
        return cls.from_state(_decode(node["state"], arrays, where, hint))
    return {k: _decode(v, arrays, where, hint) for k, v in node.items()}


def files(stem: Path) -> tuple[Path, Path]:
    stem = Path(stem)
    return stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".safetensors")


def save(obj, stem: Path, info: dict | None = None) -> list[Path]:
    """Write ``obj`` to ``<stem>.json`` (the tree, plus ``info``) and ``<stem>.safetensors``, each atomically."""
    from safetensors.numpy import save_file

    from stack.cache import atomic_write, sha256

    arrays: dict = {}
    tree = _encode(obj, arrays, str(stem))
    js, st = files(stem)
    atomic_write(st, lambda p: save_file(arrays, str(p)))
    doc = {"format": FORMAT, "arrays_sha256": sha256(st), "tree": tree, **({"info": info} if info else {})}
    atomic_write(js, lambda p: p.write_text(json.dumps(doc, indent=1, allow_nan=True) + "\n"))
    return [js, st]


def read_doc(stem: Path, hint: str) -> dict:
    from stack.cache import read_json

    js, _ = files(stem)
    doc = read_json(js, hint)
    if doc.get("format") != FORMAT:
        raise StackError(f"{js}: not a saved stack model of format {FORMAT}; {hint}")
    return doc


def load(stem: Path, hint: str = "rebuild it"):
    """The object saved by ``save(obj, stem)``; a missing, truncated or foreign file is a StackError naming it."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    from stack.cache import sha256

    doc = read_doc(stem, hint)
    _, st = files(stem)
    if not st.is_file():
        raise StackError(f"{st}: not found; {hint}")
    try:
        arrays = load_file(str(st))
    except (SafetensorError, OSError, ValueError) as e:
        raise StackError(f"{st}: unreadable ({str(e).splitlines()[0][:80]}); {hint}") from None
    if doc.get("arrays_sha256") != sha256(st):  # written apart: both must be of the same save
        raise StackError(f"{st}: does not belong to {files(stem)[0].name} (another save, or edited); {hint}")
    try:
        return _decode(doc["tree"], arrays, files(stem), hint)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:  # a tree edited by hand
        raise StackError(f"{files(stem)[0]}: malformed ({type(e).__name__}: {str(e)[:80]}); {hint}") from None
