"""Other essay sets by editing params.yaml alone: an AES 2.0-shaped set (one holistic score 1-6, QWK, no sample
submission) and a CommonLit-shaped set (two continuous targets, 4 prompts, folds grouped by prompt), generated with
a known signal, each through `dvc repro`, `stack predict`, and `stack export` + `Scorer` in a fresh process in
another folder, with cheap members (text statistics, TF-IDF)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from test_dvc import commit, dvc, init_repo, ran, sh

from conftest import edit_yaml, make_project

BASIC = ["good", "bad", "big", "small", "thing", "people", "like", "make", "go", "get", "school", "friend", "time",
         "day", "work", "home"]
RICH = ["consequently", "nevertheless", "substantial", "perspective", "demonstrate", "significant", "furthermore",
        "comprehensive", "ambiguous", "meticulous", "advocate", "inevitable"]
TYPO = {"because": "becuase", "their": "thier", "really": "realy", "believe": "beleive", "which": "wich"}


def _sentence(rng, richness: float, typos: float, topic: list[str] = ()) -> str:
    words = [str(rng.choice(RICH)) if rng.random() < richness else str(rng.choice(BASIC + list(TYPO)))
             for _ in range(rng.integers(6, 10 + int(8 * richness)))]
    words += list(topic)
    words = [TYPO.get(w, w) if rng.random() < typos else w for w in words]
    rng.shuffle(words)
    return " ".join(words).capitalize() + "."


def aes_set(n: int, seed: int = 0) -> pd.DataFrame:
    """essay_id, full_text, score (1-6), prompt_id, grade: better essays are longer, richer and better spelled."""
    rng = np.random.default_rng(seed)
    score = rng.choice(np.arange(1, 7), n, p=[0.08, 0.22, 0.3, 0.22, 0.13, 0.05])
    texts = []
    for s in score:
        q = (s - 1) / 5 + rng.normal(0, 0.08)
        texts.append(" ".join(_sentence(rng, max(q, 0) * 0.6, max(0.5 - q, 0) * 0.8) for _ in range(2 + int(3 * s))))
    return pd.DataFrame({"essay_id": [f"e{seed}-{i}" for i in range(n)], "full_text": texts, "score": score,
                         "prompt_id": [f"p{i % 4}" for i in range(n)], "grade": rng.integers(6, 11, n)})


def commonlit_set(n: int, seed: int = 0) -> pd.DataFrame:
    """student_id, prompt_id, text, content, wording: content counts the prompt's own topic words, wording the
    rich vocabulary; every prompt has its own topic."""
    rng = np.random.default_rng(seed)
    content, wording = rng.normal(0, 1, n), rng.normal(0, 1, n)
    topics = [["volcano", "lava", "eruption"], ["pyramid", "pharaoh", "tomb"], ["rainforest", "canopy", "species"],
              ["electricity", "circuit", "voltage"]]
    texts = []
    for i in range(n):
        topic = topics[i % 4][: int(np.clip(1.5 + content[i], 0, 3))] * int(np.clip(2 + content[i] * 2, 0, 6))
        richness = float(np.clip(0.3 + 0.2 * wording[i], 0, 0.8))
        texts.append(" ".join(_sentence(rng, richness, 0.1, topic[j::4]) for j in range(4)))
    return pd.DataFrame({"student_id": [f"s{seed}-{i}" for i in range(n)], "prompt_id": [f"p{i % 4}" for i in range(n)],
                         "text": texts, "content": np.round(content, 3), "wording": np.round(wording, 3)})


AES_TASK = {"id": "essay_id", "text": "full_text", "targets": {"score": {"min": 1, "max": 6, "step": 1}},
            "metric": "qwk", "keep": ["prompt_id", "grade"]}
COMMONLIT_TASK = {"id": "student_id", "text": "text",
                  "targets": {"content": {"min": -4, "max": 4, "step": None}, "wording": {"min": -4, "max": 4, "step": None}},
                  "metric": "mcrmse", "keep": ["prompt_id"]}


def own_project(root: Path, encoder: Path, train: pd.DataFrame, test: pd.DataFrame, task: dict, folds: dict) -> Path:
    """The project's params.yaml, dvc.yaml and configs with another data set: only params.yaml is edited."""
    make_project(root, encoder, members=("features", "tfidf"))
    (root / "my").mkdir()
    train.to_csv(root / "my" / "train.csv", index=False)
    test.to_csv(root / "my" / "test.csv", index=False)
    edit_yaml(root / "params.yaml", data={"train": "my/train.csv", "test": "my/test.csv", "sample_submission": None},
              task=task, folds=folds)
    edit_yaml(root / "configs" / "members" / "tfidf.yaml", max_features=3000, min_df=1)  # a member's own config
    return init_repo(root)


def stack(*args, cwd) -> str:
    return sh(str(Path(sys.executable).parent / "stack"), *args, cwd=cwd)


def score_elsewhere(bundle: Path, essays: pd.DataFrame, where: Path) -> pd.DataFrame:
    """Scorer.load(bundle).score(essays) in a fresh process whose working folder holds no project."""
    where.mkdir()
    essays.to_csv(where / "in.csv", index=False)
    code = ("import pandas as pd; from stack import Scorer; "
            f"Scorer.load({str(bundle)!r}).score(pd.read_csv('in.csv', dtype=str)).to_csv('out.csv', index=False)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], cwd=where, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return pd.read_csv(where / "out.csv", dtype={essays.columns[0]: str})


@pytest.fixture(scope="module")
def aes(tmp_path_factory, tiny_bert_dir):
    root = tmp_path_factory.mktemp("aes") / "repo"
    train, test = aes_set(180, 0), aes_set(12, 1).drop(columns=["score", "prompt_id", "grade"])
    own_project(root, tiny_bert_dir, train, test, AES_TASK, {"n_folds": 3, "seed": 0})
    return root, dvc("repro", cwd=root), test


def test_an_aes_shaped_set_runs_end_to_end_in_its_own_metric(aes, tmp_path):
    root, out, test = aes
    assert ran(out) == {"folds", "fit@features", "fit@tfidf", "blend", "report"}
    cv = json.loads((root / "metrics" / "cv.json").read_text())
    assert cv["metric"] == {"name": "qwk", "better": "higher"}
    assert set(cv["blend"]) >= {"qwk", "per_target", "rmse", "rmse_per_target", "ci95"}
    assert cv["blend"]["qwk"] > 0.6  # the planted signal is found
    assert cv["best_single"]["model"] == max(cv["single"], key=lambda m: cv["single"][m]["qwk"])  # higher is better
    assert cv["rounding"]["tried"] and cv["rounding"]["applied"] in ("round", "thresholds")
    best_mapping = max(cv["rounding"]["nested_rounded"], cv["rounding"]["nested_thresholds"])
    assert cv["blend"]["qwk"] == pytest.approx(best_mapping)
    sub = pd.read_csv(root / "submission.csv", dtype={"essay_id": str})
    assert list(sub.columns) == ["essay_id", "score"] and sub["essay_id"].tolist() == test["essay_id"].tolist()
    assert set(sub["score"]) <= {1, 2, 3, 4, 5, 6}  # scores on the grid: QWK's
    oof = pd.read_parquet(root / "models" / "blend" / "oof.parquet")
    assert list(oof.columns) == ["essay_id", "fold", "true_score", "pred_score", "prompt_id", "grade"]
    member = json.loads((root / "cache" / "features" / "config.json").read_text())
    assert set(member["cv"]) >= {"qwk", "rmse"} and "task" in member
    report = (root / "reports" / "report.md").read_text()
    assert "Metric: QWK, higher is better" in report and "## How sure: 90% intervals" in report
    assert "## How fair: agreement and audit by prompt_id, grade" in report and "### By prompt_id" in report
    assert (root / "reports" / "audit_dsm.png").is_file()
    assert 0.85 <= cv["intervals"]["per_target"]["score"]["coverage"] <= 1.0

    stack("predict", "--input", "my/test.csv", "--out", "scores.csv", cwd=root)
    repo = pd.read_csv(root / "scores.csv", dtype={"essay_id": str})
    pd.testing.assert_frame_equal(repo, sub)  # the saved stack reproduces the submission
    stack("predict", "--input", "my/test.csv", "--out", "iv.csv", "--interval", "0.9", cwd=root)
    iv = pd.read_csv(root / "iv.csv", dtype={"essay_id": str})
    assert list(iv.columns) == ["essay_id", "score", "score_lo", "score_hi"]
    assert set(iv["score_lo"]) | set(iv["score_hi"]) <= {1, 2, 3, 4, 5, 6}
    stack("export", str(tmp_path / "bundle"), cwd=root)
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["task"]["targets"] == {"score": {"min": 1.0, "max": 6.0, "step": 1.0}}
    assert "Scores essays on 1 target: score (1-6 by 1)" in (tmp_path / "bundle" / "README.md").read_text()
    away = score_elsewhere(tmp_path / "bundle", test, tmp_path / "elsewhere")
    pd.testing.assert_frame_equal(away, repo)


def test_changing_the_metric_reruns_only_stage_two_and_a_changed_scale_refuses_stale_caches(aes, tmp_path):
    root, _, _ = aes
    commit(root, "aes")
    edit_yaml(root / "params.yaml", lambda p: p["task"].update(metric="rmse"))
    assert ran(dvc("repro", cwd=root)) == {"blend", "report"}
    cv = json.loads((root / "metrics" / "cv.json").read_text())
    assert cv["metric"] == {"name": "rmse", "better": "lower"} and "rmse" in cv["blend"]
    edit_yaml(root / "params.yaml", lambda p: p["task"]["targets"]["score"].update(min=0))
    result = subprocess.run([str(Path(sys.executable).parent / "stack"), "blend"], cwd=root, capture_output=True,
                            text=True)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "cache/folds.parquet: made for another task" in result.stderr
    stack("folds", cwd=root)
    result = subprocess.run([str(Path(sys.executable).parent / "stack"), "blend"], cwd=root, capture_output=True,
                            text=True)
    assert result.returncode == 2 and "cache was written with another task" in result.stderr
    subprocess.run(["git", "checkout", "-q", "--", "params.yaml"], cwd=root, check=True)
    dvc("repro", cwd=root)  # the folds of the committed task come back (rerun, or restored from DVC's run-cache)
    assert json.loads(dvc("status", "--json", cwd=root) or "{}") == {}
    stack("blend", cwd=root)


def test_a_commonlit_shaped_set_with_grouped_folds_runs_end_to_end(tmp_path, tiny_bert_dir):
    train, test = commonlit_set(160, 0), commonlit_set(10, 1)[["student_id", "text"]]
    root = own_project(tmp_path / "repo", tiny_bert_dir, train, test, COMMONLIT_TASK,
                       {"n_folds": 4, "seed": 0, "group": "prompt_id"})
    assert ran(dvc("repro", cwd=root)) == {"folds", "fit@features", "fit@tfidf", "blend", "report"}
    folds = pd.read_parquet(root / "cache" / "folds.parquet").merge(train, on="student_id")
    assert (folds.groupby("prompt_id")["fold"].nunique() == 1).all()  # no prompt in two folds
    cv = json.loads((root / "metrics" / "cv.json").read_text())
    assert "metric" not in cv and set(cv["blend"]["per_target"]) == {"content", "wording"}
    mean_predictor = float(np.mean(train[["content", "wording"]].std(ddof=0)))
    assert cv["blend"]["mcrmse"] < 0.9 * mean_predictor  # unseen prompts, still the planted signal
    assert not cv["rounding"]["tried"] and cv["rounding"]["applied"] is False
    sub = pd.read_csv(root / "submission.csv", dtype={"student_id": str})
    assert list(sub.columns) == ["student_id", "content", "wording"] and len(sub) == len(test)
    assert sub[["content", "wording"]].abs().max().max() <= 4 and sub["content"].nunique() == len(test)  # continuous
    params = yaml.safe_load((root / "params.yaml").read_text())
    assert params["task"] == COMMONLIT_TASK  # params.yaml alone was edited: the code is the project's own

    stack("predict", "--input", "my/test.csv", "--out", "scores.csv", cwd=root)
    repo = pd.read_csv(root / "scores.csv", dtype={"student_id": str})
    np.testing.assert_allclose(repo[["content", "wording"]], sub[["content", "wording"]], atol=1e-9)
    stack("export", str(tmp_path / "bundle"), cwd=root)
    away = score_elsewhere(tmp_path / "bundle", test, tmp_path / "elsewhere")
    assert list(away.columns) == ["student_id", "content", "wording"]
    np.testing.assert_allclose(away[["content", "wording"]], repo[["content", "wording"]], atol=1e-9)
