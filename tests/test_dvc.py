"""The project's own dvc.yaml in a temp git+DVC repo on 40 essays: full repro, no-op repro, narrow reruns (a
stage-two module or default reruns only stage two, a member's config only that member), the GPU users' path
(`members: [base, large]` -> `dvc repro` -> `stack blend --models base,large`) on tiny random DeBERTa folders; and
every stage's code deps cover the code they import."""

import ast
import json
import os
import shutil
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import ROOT, TARGETS, edit_yaml, make_project


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


def _outs(stage: dict) -> list[str]:
    return [next(iter(o)) if isinstance(o, dict) else o for o in stage.get("outs", []) + stage.get("metrics", [])]


def test_every_artefact_a_stage_reads_is_written_by_a_stage():
    """A dep under cache/, models/ or metrics/ is some stage's out, so DVC orders the stages and rebuilds a deleted
    artefact (without it, a fresh clone's `dvc repro` skips `folds` and `fit@*` fails on a missing folds.parquet)."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    wild = lambda p: p.replace("${item}", "*").replace("${key}", "*")  # noqa: E731
    outs = {name: [wild(o) for o in _outs(s.get("do", s))] for name, s in stages.items()}
    for name, stage in stages.items():
        for dep in map(wild, stage.get("do", stage)["deps"]):
            if dep.split("/")[0] not in {"cache", "models", "metrics", "reports"}:
                continue
            writers = [w for w, os_ in outs.items() if w != name and any(
                fnmatch(dep, o) or fnmatch(dep, o + "/*") or fnmatch(o, dep + "/*") for o in os_)]
            assert writers, f"dvc.yaml stage {name} reads {dep}, which no stage writes: add it to a stage's outs"


def init_repo(root: Path) -> Path:
    shutil.copytree(ROOT / "stack", root / "stack", ignore=shutil.ignore_patterns("__pycache__"))
    sh("git", "init", "-q", cwd=root)
    sh(sys.executable, "-m", "dvc", "init", "-q", cwd=root)
    sh(sys.executable, "-m", "dvc", "config", "core.analytics", "false", cwd=root)
    commit(root, "init")
    return root


def commit(root: Path, message: str) -> None:
    sh("git", "add", "-A", cwd=root)
    sh("git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", message, cwd=root)


@pytest.fixture
def repo(tmp_path, tiny_bert_dir):
    return init_repo(make_project(tmp_path / "repo", tiny_bert_dir))


def dvc(*args, cwd):
    return sh(sys.executable, "-m", "dvc", *args, cwd=cwd)


def stale(repo) -> set[str]:
    """Stage names `dvc status` marks as changed."""
    out = json.loads(dvc("status", "--json", cwd=repo) or "{}")
    return set(out)


def test_repro_then_noop_then_only_what_changed(repo):
    first = dvc("repro", cwd=repo)
    assert ran(first) == {"folds", "fit@minilm", "blend", "report"}
    assert (repo / "submission.csv").exists()
    metrics = json.loads(dvc("metrics", "show", "--json", cwd=repo))
    assert "metrics/cv.json" in json.dumps(metrics) and "metrics/members/minilm.json" in json.dumps(metrics)

    assert ran(dvc("repro", cwd=repo)) == set()

    # a deleted artefact is rebuilt (run or restored from DVC's run-cache), not skipped
    (repo / "cache" / "folds.parquet").unlink()
    assert "folds" in stale(repo)
    dvc("repro", cwd=repo)
    assert (repo / "cache" / "folds.parquet").exists() and not stale(repo)

    # a stage-two param reruns only stage two
    edit_yaml(repo / "params.yaml", blend={**yaml.safe_load((repo / "params.yaml").read_text())["blend"], "method": "hill"})
    assert ran(dvc("repro", cwd=repo)) == {"blend", "report"}

    # a member's config reruns that member and what depends on it, never the folds
    edit_yaml(repo / "configs" / "members" / "minilm.yaml", pooling=["mean", "max"])
    assert ran(dvc("repro", cwd=repo)) == {"fit@minilm", "blend", "report"}


def test_stage_two_code_and_defaults_leave_stage_one_alone(repo):
    """Each stage depends only on the code it runs: stage-two code and stage-two defaults live in stack/blend/."""
    edit_yaml(repo / "params.yaml", members=["minilm", "features"])
    dvc("repro", cwd=repo)
    assert stale(repo) == set()
    config = repo / "stack" / "blend" / "config.py"
    text = config.read_text()
    assert 'bootstrap: int = 1000' in text
    config.write_text(text.replace("bootstrap: int = 1000", "bootstrap: int = 200"))
    run = repo / "stack" / "blend" / "run.py"
    run.write_text(run.read_text() + "\n# an edit to a stage-two module\n")
    assert stale(repo) == {"blend"}  # report follows once blend writes a new metrics/cv.json
    assert {"blend"} <= ran(dvc("repro", cwd=repo)) <= {"blend", "report"}

    # a member's config marks only that member
    edit_yaml(repo / "configs" / "members" / "features.yaml", head_alphas=[1, 10, 100])
    assert stale(repo) == {"fit@features"}


def test_a_head_runs_after_its_input_and_reruns_with_it_only(repo):
    edit_yaml(repo / "params.yaml", heads={"minilm-krr": "minilm"})
    edit_yaml(repo / "configs" / "members" / "minilm-krr.yaml", layers=[1, 2])
    assert ran(dvc("repro", cwd=repo)) == {"folds", "fit@minilm", "head@minilm-krr", "blend", "report"}
    cv = json.loads((repo / "metrics" / "cv.json").read_text())
    assert cv["models"] == ["minilm", "minilm-krr"]  # blend.models [] = members + heads
    edit_yaml(repo / "configs" / "members" / "minilm-krr.yaml", gamma_scales=[0.5, 1.0])
    assert ran(dvc("repro", cwd=repo)) == {"head@minilm-krr", "blend", "report"}
    edit_yaml(repo / "configs" / "members" / "minilm.yaml", pooling=["mean", "max"])
    assert ran(dvc("repro", cwd=repo)) == {"fit@minilm", "head@minilm-krr", "blend", "report"}


def test_gpu_path_base_and_large_then_blend_them(tmp_path, tiny_deberta_dir):
    """README's first example for GPU users, on CPU with tiny random DeBERTa folders standing in for the hub's
    deberta-v3-base and -large: `members: [base, large]`, `dvc repro`, `stack blend --models base,large`."""
    root = make_project(tmp_path / "repo", tiny_deberta_dir, members=("base", "large"))
    for name in ("base", "large"):
        edit_yaml(root / "configs" / "members" / f"{name}.yaml", epochs=1, max_len=64, batch_size=8, eval_batch_size=16,
                  grad_checkpointing=True, precision="fp32")
    init_repo(root)
    out = dvc("repro", cwd=root)
    assert ran(out) == {"folds", "fit@base", "fit@large", "blend", "report"}
    for name in ("base", "large"):
        assert sorted(p.name for p in (root / "models" / name).glob("fold*")) == ["fold0", "fold1"]
        meta = json.loads((root / "cache" / name / "config.json").read_text())
        assert meta["kind"] == "finetune" and meta["config_json"]["backbone"]["hub"].startswith("microsoft/deberta-v3-")
    blended = sh(str(Path(sys.executable).parent / "stack"), "blend", "--models", "base,large", cwd=root)
    assert "blend:ridge" in blended
    cv = json.loads((root / "metrics" / "cv.json").read_text())
    assert cv["models"] == ["base", "large"] and set(cv["single"]) == {"base", "large"}
    sub = pd.read_csv(root / "submission.csv")
    sample = pd.read_csv(root / "data" / "fb3" / "sample_submission.csv")
    assert list(sub["text_id"]) == list(sample["text_id"]) and list(sub.columns) == ["text_id", *TARGETS]
    values = sub[list(TARGETS)].to_numpy()
    assert np.isfinite(values).all() and values.min() >= 1.0 and values.max() <= 5.0


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

    dvc("repro", cwd=repo)
    commit(repo, "baseline")
    dvc("exp", "run", "--queue", "-S", "blend.features=emb", "-n", "emb", cwd=repo)
    dvc("exp", "run", "--queue", "-S", "blend.method=hill", "-n", "hill", cwd=repo)
    dvc("queue", "start", "-j", "2", cwd=repo)
    deadline = time.monotonic() + 600
    while len(experiments(repo)) < 2 and time.monotonic() < deadline:
        time.sleep(5)
    status = dvc("queue", "status", cwd=repo)
    assert status.count("Success") == 2, status
    exps = experiments(repo)
    assert exps["emb"]["features"] == "emb" and exps["hill"]["method"] == "hill"
    assert exps["emb"]["blend"] != exps["hill"]["blend"]
