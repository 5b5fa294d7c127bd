"""The metrics against hand-computed values (MCRMSE, pooled RMSE, QWK), their directions, and bootstrap intervals
that follow the direction."""

import numpy as np
import pytest

from stack.metrics import get_metric, mcrmse, qwk, score
from stack.task import Scale, build_task

from conftest import FB3


def test_mcrmse_hand_computed():
    y = np.full((2, 6), 3.0)
    p = y.copy()
    p[:, 0] = [4.0, 2.0]  # errors 1, 1 -> RMSE 1
    p[0, 1] = 5.0  # errors 2, 0 -> RMSE sqrt(2)
    overall, per = mcrmse(y, p)
    assert per["cohesion"] == pytest.approx(1.0)
    assert per["syntax"] == pytest.approx(np.sqrt(2.0))
    assert per["conventions"] == 0.0
    assert overall == pytest.approx((1.0 + np.sqrt(2.0)) / 6)


def test_mean_predictor_on_train_scores_about_0653():
    from stack.data import read_train

    from conftest import DATA, TARGETS

    y = read_train(DATA / "train.csv", FB3)[list(TARGETS)].to_numpy()
    overall, _ = mcrmse(y, np.broadcast_to(y.mean(0), y.shape))
    assert overall == pytest.approx(0.653, abs=0.001)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shapes differ"):
        mcrmse(np.zeros((3, 6)), np.zeros((2, 6)))


def test_bootstrap_interval_holds_the_estimate_and_paired_gains_have_the_right_sign():
    from stack.blend.intervals import bootstrap_ci, paired_bootstrap

    rng = np.random.default_rng(0)
    y = rng.uniform(1, 5, (500, 6))
    good, bad = y + rng.normal(0, 0.3, y.shape), y + rng.normal(0, 0.5, y.shape)
    lo, hi = bootstrap_ci(FB3, y, good, n=300)
    assert lo < mcrmse(y, good)[0] < hi and hi - lo < 0.05
    g = paired_bootstrap(FB3, y, good, bad, n=300)
    assert g["gain"] == pytest.approx(mcrmse(y, bad)[0] - mcrmse(y, good)[0])
    assert 0 < g["low"] < g["gain"] < g["high"] and g["p_not_better"] == 0.0
    same = paired_bootstrap(FB3, y, good, good, n=300)
    assert same["gain"] == 0 and same["low"] == same["high"] == 0 and same["p_not_better"] == 1.0


SCALE = Scale(1.0, 4.0, 1.0)


def test_qwk_hand_computed():
    """y = [1, 2, 3, 4], p = [1, 2, 4, 4]: O has one off-diagonal count (3 -> 4), weight (3-4)^2 = 1; the marginals
    give sum(W E) = (1/4) * sum_ij h_i g_j (i-j)^2 with h = [1,1,1,1], g = [1,1,0,2] over levels 0..3:
    (19 + 9 + 7 + 13) / 4 = 12, so QWK = 1 - 1/12."""
    y, p = np.array([1.0, 2, 3, 4]), np.array([1.0, 2, 4, 4])
    h, g = np.array([1, 1, 1, 1]), np.array([1, 1, 0, 2])
    i = np.arange(4)
    expected = 1 - 1.0 / ((h[:, None] * g[None, :] * (i[:, None] - i[None, :]) ** 2).sum() / 4)
    assert qwk(y, p, SCALE) == pytest.approx(expected) == pytest.approx(1 - 1 / 12)
    assert qwk(y, y, SCALE) == 1.0
    assert qwk(y, y[::-1], SCALE) == pytest.approx(-1.0)  # perfectly reversed: kappa -1
    assert qwk(y, p + 0.3, SCALE) == qwk(y, p, SCALE)  # predictions are rounded to the grid first
    assert qwk(np.full(3, 2.0), np.full(3, 2.0), SCALE) == 1.0 and qwk(np.full(3, 2.0), np.full(3, 3.0), SCALE) == 0.0


def test_qwk_matches_scikit_learn_on_random_grades():
    from sklearn.metrics import cohen_kappa_score

    rng = np.random.default_rng(0)
    y, p = rng.integers(1, 5, 300).astype(float), rng.integers(1, 5, 300).astype(float)
    p[:150] = y[:150]
    assert qwk(y, p, SCALE) == pytest.approx(cohen_kappa_score(y, p, weights="quadratic"), abs=1e-12)


def test_each_metric_knows_its_direction_and_what_it_reports():
    y = np.array([[1.0, 2.0], [2.0, 3.0], [3.0, 4.0], [4.0, 1.0]])
    p = y + np.array([[0.0, 1.0], [0.0, 1.0], [0.0, -1.0], [1.0, 0.0]])
    two = {"a": {"min": 1, "max": 4, "step": 1}, "b": {"min": 1, "max": 4, "step": 1}}
    m = score(build_task({"targets": two, "metric": "mcrmse"}), y, p)
    assert m["mcrmse"] == pytest.approx((0.5 + np.sqrt(0.75)) / 2) and set(m) == {"mcrmse", "per_target"}
    r = score(build_task({"targets": two, "metric": "rmse"}), y, p)
    assert r["rmse"] == pytest.approx(np.sqrt(4 / 8))  # pooled over every error
    q = score(build_task({"targets": two, "metric": "qwk"}), y, p)
    assert set(q) == {"qwk", "per_target", "rmse", "rmse_per_target"} and q["rmse"] == pytest.approx(r["rmse"])
    assert q["qwk"] == pytest.approx(np.mean([qwk(y[:, j], p[:, j], SCALE) for j in range(2)]))
    assert [get_metric(n).better for n in ("mcrmse", "rmse", "qwk")] == ["lower", "lower", "higher"]
    qwk_m = get_metric("qwk")
    assert qwk_m.gain(0.8, 0.7) == pytest.approx(0.1) and get_metric("rmse").gain(0.4, 0.5) == pytest.approx(0.1)
    assert qwk_m.best({"x": 0.7, "y": 0.8}) == "y" and get_metric("mcrmse").best({"x": 0.7, "y": 0.8}) == "x"


def test_paired_gain_follows_the_metrics_direction():
    from stack.blend.intervals import bootstrap_ci, paired_bootstrap

    task = build_task({"targets": {"s": {"min": 1, "max": 6, "step": 1}}, "metric": "qwk"})
    rng = np.random.default_rng(0)
    y = rng.integers(1, 7, (400, 1)).astype(float)
    good, bad = y + rng.normal(0, 0.5, y.shape), y + rng.normal(0, 1.5, y.shape)
    g = paired_bootstrap(task, y, good, bad, n=200)
    assert g["gain"] == pytest.approx(qwk(y[:, 0], good[:, 0], task.scales[0]) - qwk(y[:, 0], bad[:, 0], task.scales[0]))
    assert 0 < g["low"] < g["gain"] < g["high"]  # higher QWK is better: a positive gain
    lo, hi = bootstrap_ci(task, y, good, n=200)
    assert lo < qwk(y[:, 0], good[:, 0], task.scales[0]) < hi
