"""Bootstrap intervals of the task's metric for stage two's report: the blend's nested CV, and paired gains over
other predictions of the same essays (each resample draws essays with replacement; 1000 resamples by default).

    lo, hi = bootstrap_ci(task, y, nested)                     # 95% interval of the metric of the nested OOF
    g = paired_bootstrap(task, y, nested, best_member_oof)     # {"gain", "low", "high", "p_not_better"}
"""

from __future__ import annotations

import numpy as np

from stack.metrics import get_metric


def _resamples(n_rows: int, n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n_rows, size=(n, n_rows))


def bootstrap_ci(task, y_true: np.ndarray, y_pred: np.ndarray, n: int = 1000, seed: int = 0, level: float = 0.95):
    """``level`` percentile interval of the task's metric over ``n`` resamples of the essays (rows) -> (low, high)."""
    metric = get_metric(task.metric)
    idx = _resamples(len(y_true), n, seed)
    scores = metric.overall(np.asarray(y_true, float), np.asarray(y_pred, float), task.scales, idx)
    lo, hi = np.quantile(scores, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def paired_bootstrap(task, y_true: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, n: int = 1000, seed: int = 0,
                     level: float = 0.95) -> dict:
    """How much better ``a`` scores than ``b`` in the task's metric (positive: ``a`` is better, whichever way the
    metric points), on the same resampled essays ``n`` times -> {"gain", "low", "high", "p_not_better"} where
    ``p_not_better`` is the share of resamples with gain <= 0."""
    metric = get_metric(task.metric)
    y = np.asarray(y_true, float)
    a, b = np.asarray(pred_a, float), np.asarray(pred_b, float)
    idx = _resamples(len(y), n, seed)
    gains = metric.gain(metric.overall(y, a, task.scales, idx), metric.overall(y, b, task.scales, idx))
    lo, hi = np.quantile(gains, [(1 - level) / 2, (1 + level) / 2])
    gain = float(metric.gain(metric.overall(y, a, task.scales)[0], metric.overall(y, b, task.scales)[0]))
    return {"gain": gain, "low": float(lo), "high": float(hi), "p_not_better": float(np.mean(gains <= 0))}
