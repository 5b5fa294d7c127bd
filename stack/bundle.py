"""``stack export DIR``: a self-contained bundle of the trained stack, and loading one to score essays anywhere
(an offline Kaggle notebook, a researcher's laptop) with no repository, no params.yaml and no hub.

    bundle/
      manifest.json        format, versions, the task, members, CV table, every file's SHA-256 and size
      README.md            how to use it
      blend/blender.{json,safetensors}
      members/<name>/member.json + heads.{json,safetensors} | fold<k>/model.safetensors + backbone/ (tokenizer,
                           config.json, and for frozen members the weights as model.safetensors)

A bundle is data, never code: arrays in safetensors, everything else JSON; no pickle anywhere. Loading checks the
format, then every file against the manifest (a missing, edited, truncated or unlisted file is refused by name)
before anything is read, and loads transformer weights from safetensors only.

    stack export bundle/                  # after `dvc repro` (or `stack blend`)
    stack predict --bundle bundle/ --input essays.csv --out scores.csv
    Scorer.load("bundle/").score(df)          # stack.scorer loads it
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from pathlib import Path

from stack import paths
from stack.cache import MEMBER_JSON, read_json, sha256, with_inputs
from stack.errors import StackError

FORMAT = "stack-bundle/2"
READS = ("stack-bundle/1", FORMAT)  # 1: made before tasks (stack.renamed), its blend scores FB3
MANIFEST = "manifest.json"


def _versions() -> dict:
    import sklearn
    import torch
    import transformers

    import stack

    return {"stack": stack.__version__, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "scikit-learn": sklearn.__version__}


def export_bundle(out: Path, keep_folds: bool = False, drop_zero: bool = False, by_reference: bool = False) -> dict:
    """Write the bundle of the project's saved blend and the members it uses into ``out`` (must not exist, or be
    empty); -> the manifest. ``keep_folds``: every fold head and fine-tuned fold outputs, not only what scoring
    needs; ``drop_zero``: leave out members the blend weights at zero; ``by_reference``: packaged backbones are
    referenced (their package must be installed where the bundle is used) instead of copied."""
    from stack.blend.persist import check_blend, load_blend, prune_zero, save_blend
    from stack.cache import write_json
    from stack.members.registry import spec_from_json
    from stack.members.run import read_member_json

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise StackError(f"{out}: not empty; export into a new folder")
    fitted = load_blend()
    if drop_zero:
        fitted = prune_zero(fitted)
    # a head's input travels too, even if the blend does not weigh it
    metas = with_inputs(list(fitted.layout.models), lambda m: read_member_json(paths.member_dir(m)), " before exporting")
    check_blend(fitted, {"models": {m: metas[m]["config"] for m in fitted.layout.models}})
    tmp = out.with_name(f".{out.name}.tmp-export")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for name, meta in metas.items():
            src, dst = paths.member_dir(name), tmp / "members" / name
            spec = spec_from_json(meta["config_json"], src, str(src / MEMBER_JSON))
            dst.mkdir(parents=True)
            changes = spec.kind.export(spec, meta, src, dst, keep_folds, by_reference)
            if changes:
                meta = {**meta, "config_json": {**meta["config_json"], "backbone": {**meta["config_json"]["backbone"], **changes}}}
            write_json(dst / MEMBER_JSON, meta)
        save_blend(fitted, tmp / "blend")
        manifest = _manifest(tmp, fitted, metas, keep_folds)
        (tmp / "README.md").write_text(_readme(manifest), encoding="utf-8")
        manifest["files"] = _listing(tmp)
        write_json(tmp / MANIFEST, manifest)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _manifest(root: Path, fitted, metas: dict, keep_folds: bool) -> dict:
    cv = json.loads(paths.cv_metrics().read_text()) if paths.cv_metrics().is_file() else {}
    task = fitted.task
    m = task.metric
    return {
        "format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "versions": _versions(),
        "keep_folds": keep_folds, "task": task.record(),
        "blend": {"method": fitted.method, "features": fitted.layout.features, "grid": fitted.grid, "cv": fitted.cv},
        "members": {name: {"kind": meta["kind"], "fingerprint": meta["config"], "cv": meta["cv"].get(m)}
                    for name, meta in metas.items()},
        "cv_table": {"metric": m, "single": {name: s.get(m) for name, s in cv.get("single", {}).items()},
                     "blend_nested": cv.get("blend", {}).get(m), "blend_ci95": cv.get("blend", {}).get("ci95")},
    }


def _listing(root: Path) -> dict:
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)
    return {p.relative_to(root).as_posix(): {"sha256": sha256(p), "bytes": p.stat().st_size} for p in files}


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def _readme(manifest: dict) -> str:
    from stack.metrics import get_metric
    from stack.task import from_record

    task = from_record(manifest["task"])
    metric = get_metric(task.metric)
    members = "\n".join(f"| `{name}` | {v['kind']} | {_fmt(v['cv'])} |" for name, v in manifest["members"].items())
    blend = manifest["blend"]
    targets = ", ".join(f"{t} ({s.min:g}-{s.max:g}{'' if s.step is None else f' by {s.step:g}'})"
                        for t, s in zip(task.targets, task.scales))
    return f"""# A trained `stack` bundle

Scores essays on {task.k} target{'s' if task.k > 1 else ''}: {targets}. Made by stack
{manifest['versions']['stack']} on {manifest['created']}.

Install the `stack` project (version {manifest['versions']['stack']}, from its repository: `pip install .` there;
on Kaggle, a wheel of it uploaded as a dataset), then:

```bash
stack predict --bundle THIS_FOLDER --input essays.csv --out scores.csv     # CSV with {task.id}, {task.text}
```

```python
from stack import Scorer
scorer = Scorer.load("THIS_FOLDER")
scorer.score(["essay one ...", "essay two ..."])   # DataFrame: {task.id} + one column per target, in input order
```

No internet is needed. Every file's SHA-256 is in manifest.json and is checked on load; the bundle holds no pickle.

| member | kind | CV {metric.name.upper()} ({metric.better} is better) |
|---|---|---|
{members}

Blend: `{blend['method']}` on {blend['features']}, nested CV {metric.name.upper()} {_fmt(blend['cv'].get('nested'))}.
"""


def verify(folder: Path) -> dict:
    """The bundle's manifest, after checking its format and every file (missing, edited or unlisted)."""
    folder = Path(folder)
    path = folder / MANIFEST
    manifest = read_json(path, f"{folder} is not a bundle written by `stack export`")
    if manifest.get("format") not in READS:
        got = manifest.get("format")
        raise StackError(f"{path}: bundle format {got!r}, this stack reads {' and '.join(map(repr, READS))}; "
                         "re-export it with this version's `stack export`")
    listed = manifest.get("files", {})
    root = folder.resolve()
    for rel, want in listed.items():
        file = folder / rel
        if file.is_symlink():
            raise StackError(f"{file}: a link, not a file of the bundle; copy the bundle without links")
        if Path(rel).is_absolute() or ".." in Path(rel).parts or not file.resolve().is_relative_to(root):
            raise StackError(f"{path}: file {rel!r} is outside the bundle; re-export it")
        if not file.is_file():
            raise StackError(f"{file}: missing (listed in {MANIFEST}); copy the whole bundle again")
        if file.stat().st_size != want["bytes"] or sha256(file) != want["sha256"]:
            raise StackError(f"{file}: differs from {MANIFEST} (edited or truncated); re-export or copy it again")
    extra = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST
                   and p.relative_to(folder).as_posix() not in listed)
    if extra:
        raise StackError(f"{folder / extra[0]}: not part of this bundle (not in {MANIFEST}); remove it")
    return manifest
