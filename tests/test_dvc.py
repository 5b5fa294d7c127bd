"""The project's own dvc.yaml in a temp git+DVC repo on 40 essays: full repro, no-op repro, narrow reruns; and
every stage's code deps cover the code they import."""

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, make_project


def sh(*args, cwd):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    result = subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def ran(output: str) -> set[str]:
    """Stage names that `dvc repro` actually executed."""
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


def _stack_imports(path: Path) -> set[Path]:
    """Files of the ``stack`` modules that ``path`` imports anywhere (top level or inside functions)."""
    package = path.relative_to(ROOT).with_suffix("").parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names = [module] + [f"{module}.{a.name}" for a in node.names]
        else:
            continue
        for name in (n for n in names if n == "stack" or n.startswith("stack.")):
            stem = ROOT.joinpath(*name.split("."))
            found |= {f for f in (stem.with_suffix(".py"), stem / "__init__.py") if f.is_file()}
    return found


def test_stage_deps_cover_the_code_they_import():
    """A change to any module a stage runs must rerun it: its code deps are closed under imports."""
    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        deps = [d for d in stage.get("do", stage)["deps"] if d.startswith("stack")]
        covered = {f for d in deps for f in ((ROOT / d).rglob("*.py") if (ROOT / d).is_dir() else [ROOT / d])}
        reached, todo = set(covered), list(covered)
        while todo:
            for f in _stack_imports(todo.pop()) - reached:
                reached.add(f)
                todo.append(f)
        missing = sorted(str(f.relative_to(ROOT)) for f in reached - covered)
        assert covered and not missing, f"dvc.yaml stage {name}: add {missing} to its deps"


@pytest.fixture
def repo(tmp_path, tiny_bert_dir):
    root = make_project(tmp_path / "repo", tiny_bert_dir)
    shutil.copytree(ROOT / "stack", root / "stack", ignore=shutil.ignore_patterns("__pycache__"))
    sh("git", "init", "-q", cwd=root)
    sh(sys.executable, "-m", "dvc", "init", "-q", cwd=root)
    sh(sys.executable, "-m", "dvc", "config", "core.analytics", "false", cwd=root)
    sh("git", "add", "-A", cwd=root)
    sh("git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init", cwd=root)
    return root


def test_repro_then_noop_then_only_what_changed(repo):
    dvc = [sys.executable, "-m", "dvc"]
    first = sh(*dvc, "repro", cwd=repo)
    assert ran(first) == {"folds", "embed@minilm", "blend", "report"}
    assert (repo / "submission.csv").exists()
    metrics = json.loads(sh(*dvc, "metrics", "show", "--json", cwd=repo))
    assert "metrics/cv.json" in json.dumps(metrics)

    assert ran(sh(*dvc, "repro", cwd=repo)) == set()

    # a stage-two param reruns only stage two
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["blend"]["method"] = "hill"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert ran(sh(*dvc, "repro", cwd=repo)) == {"blend", "report"}

    # a model config change reruns that model and what depends on it, never the folds
    cfg_path = repo / "configs" / "models" / "minilm.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["pooling"] = ["mean", "max"]
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    assert ran(sh(*dvc, "repro", cwd=repo)) == {"embed@minilm", "blend", "report"}


def experiments(repo) -> dict[str, dict]:
    """{experiment name: its metrics/cv.json} from `dvc exp show --json`."""
    shown = json.loads(sh(sys.executable, "-m", "dvc", "exp", "show", "--json", cwd=repo))
    out = {}
    for commit in shown:
        for exp in commit.get("experiments") or []:
            for rev in exp["revs"]:
                out[rev["name"]] = rev["data"]["metrics"]["metrics/cv.json"]["data"]
    return out


def test_queue_of_two_experiments_completes_with_two_workers(repo):
    import time

    dvc = [sys.executable, "-m", "dvc"]
    sh(*dvc, "repro", cwd=repo)
    sh("git", "add", "-A", cwd=repo)
    sh("git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "baseline", cwd=repo)
    sh(*dvc, "exp", "run", "--queue", "-S", "blend.features=preds", "-n", "preds", cwd=repo)
    sh(*dvc, "exp", "run", "--queue", "-S", "blend.method=hill", "-n", "hill", cwd=repo)
    sh(*dvc, "queue", "start", "-j", "2", cwd=repo)
    deadline = time.monotonic() + 600
    while len(experiments(repo)) < 2 and time.monotonic() < deadline:
        time.sleep(5)
    status = sh(*dvc, "queue", "status", cwd=repo)
    assert status.count("Success") == 2, status
    exps = experiments(repo)
    assert exps["preds"]["features"] == "preds" and exps["hill"]["method"] == "hill"
    assert exps["preds"]["blend"] != exps["hill"]["blend"]
