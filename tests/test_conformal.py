"""Per-essay intervals (stack.blend.conformal): nested coverage within 2 points of nominal on heteroscedastic data,
where a constant-width interval under-covers the noisy half and is wider on average; grid widening; any level;
saved as arrays."""

import numpy as np
import pytest

from stack import state
from stack.blend.conformal import Intervals, _bounds, difficulty, nested_coverage, quantile
from stack.task import build_task

CONT = build_task({"targets": {"a": {"min": -10, "max": 10, "step": None}, "b": {"min": -10, "max": 10, "step": None}}})
GRID = build_task({"targets": {"s": {"min": 1, "max": 6, "step": 1}}})


def hetero(n=4000, seed=0):
    """Two targets whose noise is 4x larger on half of the essays, and a difficulty signal that says which half
    (the members disagree more there)."""
    rng = np.random.default_rng(seed)
    noisy = rng.random(n) < 0.5
    sd = np.where(noisy, 1.0, 0.25)[:, None]
    pred = rng.normal(0, 2, (n, 2))
    y = pred + rng.normal(0, 1, (n, 2)) * sd
    members = [pred + rng.normal(0, 1, (n, 2)) * sd * 0.8 for _ in range(3)]
    D = difficulty(CONT, pred, members, ["w " * int(n_words) for n_words in rng.integers(100, 400, n)])
    return y, pred, D, np.arange(n) % 5, noisy


def test_nested_coverage_is_nominal_and_normalized_intervals_beat_constant_width_where_noise_varies():
    y, pred, D, fold, noisy = hetero()
    report = nested_coverage(CONT, y, pred, D, fold, 0.9)
    for t in ("a", "b"):
        r = report["per_target"][t]
        assert abs(r["coverage"] - 0.9) <= 0.02 and abs(r["constant_coverage"] - 0.9) <= 0.02
        assert r["width"] < 0.9 * r["constant_width"]  # same coverage, narrower on average
    # the constant-width interval under-covers the noisy half (and over-covers the quiet one); normalized does not
    iv_const = Intervals.fit(CONT, y[fold != 0], pred[fold != 0], D[fold != 0], fold[fold != 0], normalized=False)
    iv_norm = Intervals.fit(CONT, y[fold != 0], pred[fold != 0], D[fold != 0], fold[fold != 0])
    held = fold == 0
    on_noisy = {}
    for name, iv in (("constant", iv_const), ("normalized", iv_norm)):
        lo, hi = iv.bounds(pred[held], D[held], 0.9)
        covered = (lo <= y[held]) & (y[held] <= hi)
        on_noisy[name] = covered[noisy[held]].mean()
    assert on_noisy["constant"] < 0.83 and on_noisy["normalized"] > on_noisy["constant"] + 0.02, on_noisy
    assert iv_const.bounds(pred[held], D[held], 0.9)[0].shape == (held.sum(), 2)


def test_any_level_and_wider_for_higher_levels():
    y, pred, D, fold, _ = hetero(2000, 1)
    iv = Intervals.fit(CONT, y, pred, D, fold)
    widths = [np.mean(np.subtract(*iv.bounds(pred, D, level)[::-1])) for level in (0.5, 0.8, 0.9, 0.95)]
    assert widths == sorted(widths) and widths[0] > 0
    with pytest.raises(ValueError, match="between 0 and 1"):
        iv.bounds(pred, D, 1.5)


def test_conformal_quantile_is_the_finite_sample_rank():
    scores = np.arange(1.0, 10.0)[:, None]  # n = 9: level 0.8 -> rank ceil(0.8 * 10) = 8
    assert quantile(scores, 0.8).tolist() == [8.0]
    assert quantile(scores, 0.95).tolist() == [np.inf]  # rank 10 > n: no finite interval is honest


def test_grid_intervals_are_widened_outward_to_grid_points_and_clipped():
    pred = np.array([[3.3], [1.2], [5.9], [4.0]])
    lo, hi = _bounds(GRID, pred, np.array([[0.4], [0.1], [0.5], [0.0]]))
    # 3.3 +- 0.4 = [2.9, 3.7] -> the grid points within one step beyond: [2, 4]; 4.0 +- 0 -> [3, 5] (one step)
    assert lo.ravel().tolist() == [2.0, 1.0, 5.0, 3.0] and hi.ravel().tolist() == [4.0, 2.0, 6.0, 5.0]


def test_grid_coverage_is_nominal_with_predictions_on_the_grid():
    """A QWK blend's predictions are grid values: residuals are whole steps, and coverage still holds."""
    rng = np.random.default_rng(0)
    y = rng.integers(1, 7, (3000, 1)).astype(float)
    pred = np.clip(y + rng.choice([-2, -1, 0, 0, 0, 1, 2], y.shape), 1, 6)
    D = difficulty(GRID, pred, [pred, pred + rng.normal(0, 0.3, pred.shape)], ["x"] * 3000)
    r = nested_coverage(GRID, y, pred, D, np.arange(3000) % 5, 0.9)["per_target"]["s"]
    assert r["coverage"] >= 0.88 and set(r["by_level"]) <= {"1", "2", "3", "4", "5", "6"}
    assert sum(v["n"] for v in r["by_level"].values()) == 3000


def test_intervals_save_and_load_as_arrays(tmp_path):
    y, pred, D, fold, _ = hetero(500, 2)
    iv = Intervals.fit(CONT, y, pred, D, fold)
    state.save(iv, tmp_path / "iv")
    back = state.load(tmp_path / "iv")
    for got, want in zip(back.bounds(pred, D, 0.9), iv.bounds(pred, D, 0.9)):
        np.testing.assert_array_equal(got, want)
