"""The task from params.yaml: FB3 without a section, every key checked in one line, scales (clip, round, grid), the
record that blends and bundles save, and the hash that folds and caches record (FB3 by its absence)."""

import numpy as np
import pytest

from stack.config import load_params
from stack.errors import StackError
from stack.task import Scale, Task, build_task, from_record, load_task

from conftest import FB3, TARGETS, edit_yaml

AES = {"id": "essay_id", "text": "full_text", "targets": {"score": {"min": 1, "max": 6, "step": 1}}, "metric": "qwk",
       "keep": ["prompt_id", "grade"]}


def test_no_section_is_fb3_and_the_shipped_params_spell_fb3_out(project):
    assert build_task(None) == FB3 and FB3.targets == TARGETS and FB3.metric == "mcrmse"
    assert FB3.scales == (Scale(1.0, 5.0, 0.5),) * 6 and FB3.is_fb3()
    assert load_task(load_params()) == FB3  # params.yaml writes the FB3 task in full (DVC needs its keys)
    edit_yaml(project / "params.yaml", lambda p: p.pop("task"))
    assert load_task(load_params()) == FB3


def test_an_aes_shaped_task():
    task = build_task(AES)
    assert (task.id, task.text, task.targets, task.metric, task.keep) == ("essay_id", "full_text", ("score",), "qwk",
                                                                          ("prompt_id", "grade"))
    assert task.pred_cols == ("pred_score",) and task.k == 1 and task.gridded
    assert task.scale("score").levels.tolist() == [1, 2, 3, 4, 5, 6]
    assert task.centre.tolist() == [3.5]
    assert from_record(task.record()) == task and from_record(None) == FB3


def test_clip_and_round_follow_each_targets_scale():
    task = build_task({"targets": {"a": {"min": 0, "max": 3, "step": 1}, "b": {"min": -2, "max": 2, "step": None},
                                   "c": {"min": 1, "max": 5, "step": 0.5}}})
    pred = np.array([[3.7, 2.9, 3.26], [-0.6, -5.0, 0.2], [1.5, 0.123, 4.76]])
    assert task.clip(pred).tolist() == [[3.0, 2.0, 3.26], [0.0, -2.0, 1.0], [1.5, 0.123, 4.76]]
    assert task.round(pred).tolist() == [[3.0, 2.0, 3.5], [0.0, -2.0, 1.0], [2.0, 0.123, 5.0]]  # b: clipped only
    assert not task.gridded
    assert Scale(1, 5, 0.5).on_grid(np.array([1.0, 3.5, 3.25])).tolist() == [True, True, False]


def test_fb3_is_recorded_by_its_absence_and_any_other_task_by_its_stage_one_hash():
    assert FB3.fingerprint_meta() == {}
    assert build_task({**FB3.record(), "metric": "qwk", "keep": ["grade"]}).fingerprint_meta() == {}  # stage two only
    aes = build_task(AES).fingerprint_meta()
    assert set(aes) == {"task"} and len(aes["task"]) == 16
    wider = build_task({**AES, "targets": {"score": {"min": 0, "max": 6, "step": 1}}}).fingerprint_meta()
    renamed = build_task({**AES, "id": "id"}).fingerprint_meta()
    assert len({aes["task"], wider["task"], renamed["task"]}) == 3
    assert build_task({**AES, "metric": "rmse"}).fingerprint_meta() == aes


@pytest.mark.parametrize("raw, message", [
    ({"metric": "f1"}, "task: metric 'f1' is not one of mcrmse, rmse, qwk"),
    ({"targets": {"s": {"min": 1, "max": 6, "step": None}}, "metric": "qwk"},
     "metric qwk needs every target on a grid, but 's' has step: null"),
    ({"targets": {"s": {"min": 6, "max": 1}}}, "task: targets: s: min 6 must be below max 1"),
    ({"targets": {"s": {"min": 1, "max": 6, "step": 4}}}, r"step 4 must be positive and divide max - min \(5\)"),
    ({"targets": {"s": {"max": 6}}}, "task: targets: s: no 'min'"),
    ({"targets": {"s": {"min": 1, "max": 6, "steps": 1}}}, "unknown key 'steps' \\(valid keys: min, max, step\\)"),
    ({"targets": {"s": {"min": "low", "max": 6}}}, "task: targets: s: min: expected a number, got 'low'"),
    ({"targets": {}}, "task: targets: expected one or more"),
    ({"targets": ["a", "b"]}, "task: targets: expected one or more"),
    ({"id": ""}, "task: id: expected a column name"),
    ({"keep": "grade", "id": "grade"}, "column 'grade' is named twice"),
    ({"target": {}}, "task: unknown key 'target' \\(valid keys: id, text, targets, metric, keep\\)"),
    ("fb3", "task: expected a mapping"),
])
def test_bad_task_keys_are_one_line(raw, message):
    with pytest.raises(StackError, match=f"^params.yaml: .*{message}") as e:
        build_task(raw)
    assert "\n" not in str(e.value)


def test_params_yaml_errors_name_the_file_it_came_from(project):
    other = project / "other.yaml"
    other.write_text((project / "params.yaml").read_text())
    edit_yaml(other, lambda p: p["task"].update(metric="auc"))
    with pytest.raises(StackError, match="^.*other.yaml: task: metric 'auc'"):
        load_params(other)
    assert load_params(project / "params.yaml").source == str(project / "params.yaml")


def test_task_objects_compare_by_content_not_by_the_file_they_came_from():
    assert Task(where="a.yaml") == Task(where="b.yaml")
