"""Bootstrap intervals of MCRMSE for stage two's report: the blend's nested CV, and paired gains over other
predictions of the same essays (each resample draws essays with replacement; 1000 resamples by default).

    lo, hi = bootstrap_ci(y, nested)                       # 95% interval of MCRMSE(y, nested)
    g = paired_bootstrap(y, nested, best_member_oof)       # {"gain", "low", "high", "p_not_better"}
"""

from __future__ import annotations

import numpy as np


def bootstrap_ci(y_true: np.ndarray, y_pred: np.ndarray, n: int = 1000, seed: int = 0, level: float = 0.95):
    """``level`` percentile interval of MCRMSE over ``n`` resamples of the essays (rows) -> (low, high)."""
    rng = np.random.default_rng(seed)
    sq = (np.asarray(y_true, float) - np.asarray(y_pred, float)) ** 2  # (rows, targets)
    idx = rng.integers(0, len(sq), size=(n, len(sq)))
    scores = np.sqrt(sq[idx].mean(axis=1)).mean(axis=1)  # (n,)
    lo, hi = np.quantile(scores, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def paired_bootstrap(y_true: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, n: int = 1000, seed: int = 0,
                     level: float = 0.95) -> dict:
    """MCRMSE(b) - MCRMSE(a) (positive: ``a`` is better) on the same resampled essays, ``n`` times ->
    {"gain", "low", "high", "p_not_better"} where ``p_not_better`` is the share of resamples with gain <= 0."""
    rng = np.random.default_rng(seed)
    y = np.asarray(y_true, float)
    sa, sb = (y - np.asarray(pred_a, float)) ** 2, (y - np.asarray(pred_b, float)) ** 2
    idx = rng.integers(0, len(y), size=(n, len(y)))
    gains = np.sqrt(sb[idx].mean(axis=1)).mean(axis=1) - np.sqrt(sa[idx].mean(axis=1)).mean(axis=1)
    lo, hi = np.quantile(gains, [(1 - level) / 2, (1 + level) / 2])
    gain = float(np.sqrt(sb.mean(0)).mean() - np.sqrt(sa.mean(0)).mean())
    return {"gain": gain, "low": float(lo), "high": float(hi), "p_not_better": float(np.mean(gains <= 0))}
