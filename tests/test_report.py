"""``write_report`` on a real (fake-cache) blend: every plot is a PNG and report.md shows the figures."""

from __future__ import annotations

import json
import re

import pytest
from test_blend_run import write_fake_models

from stack import paths
from stack.blend.run import run_blend
from stack.config import load_params
from stack.errors import StackError
from stack.report import write_report
from stack.stages import run_folds

from conftest import ROOT

PNG = b"\x89PNG\r\n\x1a\n"


def test_report_has_tables_and_plots(project):
    run_folds(load_params())
    params = write_fake_models({"a": 0.3, "b": 0.4})
    run_blend(params, ["a", "b"], "stack", "emb", compare=["ridge", "hill"])
    md = write_report()
    assert md == paths.report()
    text = md.read_text()
    cv = json.loads(paths.cv_metrics().read_text())
    assert f"{cv['blend']['mcrmse']:.4f}" in text and f"{cv['single']['a']['mcrmse']:.4f}" in text
    for m in ("ridge", "hill", "stack"):
        assert f"| {m} |" in text
        assert f"| blend `{m}`{' **(chosen)**' if m == 'stack' else ''} |" in text
    for png in ("per_target_rmse.png", "methods.png", "weights.png", "oof_scatter.png"):
        assert f"]({png})" in text
        assert (md.parent / png).read_bytes()[:8] == PNG
    # `make run` ends by printing these lines of the report (its pattern, read from the Makefile): all four are there
    pattern = re.search(r"grep -E '([^']+)' reports/report.md", (ROOT / "Makefile").read_text()).group(1)
    shown = [line for line in text.splitlines() if re.search(pattern, line)]
    assert [line.split()[:2] for line in shown] == [["Blend", "**stack**"], ["-", "nested"], ["-", "in-sample"],
                                                   ["-", "best"]]


def test_report_without_blend_says_what_to_run(project):
    with pytest.raises(StackError, match="run `stack blend` first"):
        write_report()
