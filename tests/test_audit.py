"""The agreement and fairness audit (stack.audit, `stack audit`): SMD, DSM and QWK against hand-computed values,
a planted bias against one group flagged and unbiased scores not, small groups shown but never flagged, and bad
input as one line."""

import json

import numpy as np
import pandas as pd
import pytest

from stack.audit import agreement, audit
from stack.metrics import qwk
from stack.task import Scale, build_task

from conftest import edit_yaml, ok, refused

TASK = build_task({"id": "essay_id", "targets": {"score": {"min": 1, "max": 6, "step": 1}}, "metric": "qwk"})


def test_smd_dsm_qwk_and_agreement_against_hand_computed_values():
    h = np.array([1.0, 2.0, 3.0, 4.0])
    m = np.array([2.0, 2.0, 3.0, 5.0])
    r = agreement(h, m, Scale(1, 6, 1))
    # SMD: (mean m - mean h) / sd(h, ddof 1) = (3 - 2.5) / sqrt(5/3)
    assert r["smd"] == pytest.approx(0.5 / np.sqrt(5 / 3))
    assert r["exact"] == 0.5 and r["adjacent"] == 1.0 and r["rmse"] == pytest.approx(np.sqrt(2 / 4))
    assert r["qwk"] == pytest.approx(qwk(h, m, Scale(1, 6, 1))) and r["r"] == pytest.approx(np.corrcoef(h, m)[0, 1])
    labels = pd.DataFrame({"essay_id": list("abcd"), "score": h, "group": ["x", "x", "y", "y"]})
    preds = pd.DataFrame({"essay_id": list("dcba"), "score": m[::-1]})  # joined on the id, not the row order
    out = audit(TASK, labels, preds, by=["group"], min_n=1, n_boot=0)
    zh, zm = (h - h.mean()) / h.std(ddof=1), (m - m.mean()) / m.std(ddof=1)  # z over the whole set
    assert out["by"]["group"]["x"]["score"]["dsm"] == pytest.approx(np.mean(zm[:2] - zh[:2]))
    assert out["by"]["group"]["y"]["score"]["dsm"] == pytest.approx(np.mean(zm[2:] - zh[2:]))
    assert out["targets"]["score"]["distribution"]["human"][:4] == [0.25] * 4


def _scores(n, bias_against=None, seed=0):
    """Human scores 1-6 and machine scores that agree well, except (optionally) half a point low for one group."""
    rng = np.random.default_rng(seed)
    group = rng.choice(["a", "b", "c"], n)
    tiny = np.where(np.arange(n) < 12, "tiny", "big")
    h = rng.integers(1, 7, n).astype(float)
    m = h + rng.normal(0, 0.45, n)
    if bias_against:
        m[group == bias_against] -= 0.6
    labels = pd.DataFrame({"essay_id": [f"e{i}" for i in range(n)], "score": h, "group": group, "size": tiny})
    return labels, pd.DataFrame({"essay_id": labels["essay_id"], "score": m})


def test_a_planted_bias_against_one_group_is_flagged_and_unbiased_scores_are_not():
    labels, fair = _scores(900)
    clean = audit(TASK, labels, fair, by=["group", "size"], n_boot=300)
    assert not clean["targets"]["score"]["flags"]
    assert all(not r["score"]["flags"] for g in clean["by"].values() for r in g.values())
    labels, biased = _scores(900, bias_against="b")
    out = audit(TASK, labels, biased, by=["group"], n_boot=300)
    b = out["by"]["group"]["b"]["score"]
    assert any(f.startswith("|DSM|") for f in b["flags"]) and b["dsm"] < -0.1 and b["dsm_ci95"][1] < -0.1
    for other in ("a", "c"):  # z is taken over the whole (biased) set: the others sit above its mean, by less
        assert 0 < out["by"]["group"][other]["score"]["dsm"] < abs(b["dsm"]) / 1.5


def test_small_groups_are_reported_but_never_flagged():
    labels, preds = _scores(400, seed=1)
    preds.loc[labels["size"] == "tiny", "score"] += 2.0  # wildly off, but only 12 essays
    out = audit(TASK, labels, preds, by=["size"], min_n=30, n_boot=100)
    tiny = out["by"]["size"]["tiny"]["score"]
    assert tiny["small"] and tiny["n"] == 12 and tiny["flags"] == [] and abs(tiny["dsm"]) > 0.5


@pytest.fixture
def fb3_files(project):
    labels = pd.read_csv("data/fb3/train.csv").iloc[:40]
    labels["gender"] = ["f", "m"] * 20
    labels.to_csv("labels.csv", index=False)
    preds = labels[["text_id", "cohesion", "syntax", "vocabulary", "phraseology", "grammar", "conventions"]].copy()
    preds.iloc[:, 1:] = (preds.iloc[:, 1:] + 0.3).clip(1, 5)
    preds.to_csv("pred.csv", index=False)
    return project


def test_stack_audit_writes_markdown_json_and_a_plot(fb3_files):
    out = ok("audit", "pred.csv", "labels.csv", "--by", "gender", "--out", "aud")
    assert "wrote aud/audit.md" in out
    result = json.loads((fb3_files / "aud" / "audit.json").read_text())
    assert set(result["targets"]) == {"cohesion", "syntax", "vocabulary", "phraseology", "grammar", "conventions"}
    assert set(result["by"]["gender"]) == {"f", "m"}
    assert (fb3_files / "aud" / "dsm.png").read_bytes()[:4] == b"\x89PNG"
    md = (fb3_files / "aud" / "audit.md").read_text()
    assert "| cohesion |" in md and "## By gender" in md


@pytest.mark.parametrize("setup, args, message", [
    (lambda: None, ["--by", "school"], "--by column 'school' is in neither labels.csv nor pred.csv"),
    (lambda: pd.read_csv("pred.csv").iloc[:30].to_csv("pred.csv", index=False), [],
     "no prediction for text_id"),
    (lambda: pd.read_csv("labels.csv").assign(grammar=lambda d: d["grammar"].where(d.index != 3, 7)).to_csv(
        "labels.csv", index=False), [], "labels.csv: row 4 .* has grammar=7, outside \\[1, 5\\]"),
])
def test_stack_audit_bad_input_is_one_line_and_writes_nothing(fb3_files, setup, args, message):
    setup()
    import re

    assert re.search(message, refused("audit", "pred.csv", "labels.csv", "--out", "aud", *args))
    assert not (fb3_files / "aud").exists()


def test_stack_audit_reads_the_task_from_params(fb3_files):
    edit_yaml("params.yaml", lambda p: p["task"].update(metric="qwk"))
    ok("audit", "pred.csv", "labels.csv", "--out", "aud")
    assert json.loads((fb3_files / "aud" / "audit.json").read_text())["targets"]["cohesion"]["qwk"] is not None
