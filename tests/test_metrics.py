"""MCRMSE against hand-computed values."""

import numpy as np
import pytest

from stack.metrics import mcrmse


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
    from stack.schema import TARGETS

    from conftest import DATA

    y = read_train(DATA / "train.csv")[list(TARGETS)].to_numpy()
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
    lo, hi = bootstrap_ci(y, good, n=300)
    assert lo < mcrmse(y, good)[0] < hi and hi - lo < 0.05
    g = paired_bootstrap(y, good, bad, n=300)
    assert g["gain"] == pytest.approx(mcrmse(y, bad)[0] - mcrmse(y, good)[0])
    assert 0 < g["low"] < g["gain"] < g["high"] and g["p_not_better"] == 0.0
    same = paired_bootstrap(y, good, good, n=300)
    assert same["gain"] == 0 and same["low"] == same["high"] == 0 and same["p_not_better"] == 1.0
