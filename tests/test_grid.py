"""Mapping blend predictions to each target's grid: fitted thresholds beat plain rounding on an ordinal signal
(nested, on rows they were not fitted on), leave continuous targets alone, and save as arrays + JSON."""

import numpy as np
import pytest

from stack import state
from stack.blend.grid import Thresholds, fit_cuts, mapped, nested_thresholds
from stack.metrics import qwk, value
from stack.task import build_task

QWK = build_task({"id": "essay_id", "targets": {"score": {"min": 1, "max": 6, "step": 1}}, "metric": "qwk"})


def shrunk(n=3000, seed=0):
    """Integer scores 1-6 and predictions of them pulled toward the mean (as regression on noisy labels does):
    rounding maps the extremes to the middle classes, thresholds can spread them out again."""
    rng = np.random.default_rng(seed)
    y = rng.choice(np.arange(1, 7), n, p=[0.07, 0.25, 0.33, 0.22, 0.1, 0.03]).astype(float)[:, None]
    pred = y.mean() + 0.55 * (y - y.mean()) + rng.normal(0, 0.35, y.shape)
    return y, pred, np.arange(n) % 5


def test_nested_thresholds_beat_rounding_on_an_ordinal_signal():
    y, pred, fold = shrunk()
    rounded = value(QWK, y, QWK.round(pred))
    nested = value(QWK, y, nested_thresholds(QWK, y, pred, fold))
    assert nested > rounded + 0.02  # honest: each fold mapped by cuts fitted on the other folds
    th = Thresholds.fit(QWK, y, pred)
    cuts = np.asarray(th.cuts[0])
    assert cuts.shape == (5,) and np.all(np.diff(cuts) > 0)
    assert np.abs(cuts - np.array([1.5, 2.5, 3.5, 4.5, 5.5])).max() > 0.1  # moved off the midpoints
    assert set(np.unique(th.apply(pred))) <= {1.0, 2.0, 3.0, 4.0, 5.0, 6.0}


def test_thresholds_start_at_rounding_and_only_move_for_a_gain():
    """Predictions already on the grid: the midpoints are optimal and stay."""
    y = np.repeat(np.arange(1.0, 7.0), 20)
    cuts = fit_cuts(y, y.copy(), QWK.scales[0], lambda a, b: -qwk(a, b, QWK.scales[0]))
    assert cuts.tolist() == [1.5, 2.5, 3.5, 4.5, 5.5]


def test_rmse_tasks_fit_thresholds_for_rmse_and_continuous_targets_are_only_clipped():
    task = build_task({"targets": {"g": {"min": 1, "max": 5, "step": 0.5}, "c": {"min": 0, "max": 1, "step": None}}})
    rng = np.random.default_rng(1)
    y = np.column_stack([np.round(rng.uniform(1, 5, 500) * 2) / 2, rng.uniform(0, 1, 500)])
    pred = y + rng.normal(0, 0.3, y.shape)
    th = Thresholds.fit(task, y, pred)
    assert th.cuts[1] is None
    out = th.apply(pred)
    assert np.array_equal(out[:, 1], np.clip(pred[:, 1], 0, 1))
    assert np.sqrt(np.mean((out[:, 0] - y[:, 0]) ** 2)) <= np.sqrt(np.mean((task.round(pred)[:, 0] - y[:, 0]) ** 2))
    assert np.array_equal(mapped(task, "none", pred), task.clip(pred))
    assert np.array_equal(mapped(task, "round", pred), task.round(pred))


def test_thresholds_save_and_load_as_arrays(tmp_path):
    y, pred, _ = shrunk(600)
    th = Thresholds.fit(QWK, y, pred)
    state.save(th, tmp_path / "th")
    back = state.load(tmp_path / "th")
    assert np.array_equal(back.apply(pred), th.apply(pred))
    assert not list(tmp_path.glob("*.pkl")) and (tmp_path / "th.safetensors").is_file()


@pytest.mark.parametrize("seed", [0, 1])
def test_nested_thresholds_never_see_the_fold_they_map(seed):
    """Mapping a fold whose labels were scrambled after fitting changes nothing: the cuts came from other rows."""
    y, pred, fold = shrunk(1000, seed)
    a = nested_thresholds(QWK, y, pred, fold)
    y2 = y.copy()
    y2[fold == 0] = y2[fold == 0][::-1]
    b = nested_thresholds(QWK, y2, pred, fold)
    assert np.array_equal(a[fold == 0], b[fold == 0])
