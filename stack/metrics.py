"""MCRMSE, the FB3 metric: the mean over the six targets of each target's RMSE.

    overall, per_target = mcrmse(y_true, y_pred)      # arrays (n, 6)
"""

from __future__ import annotations

import numpy as np

from stack.schema import TARGETS


def rmse_per_target(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Column-wise RMSE of two ``(n, k)`` arrays -> ``(k,)``."""
    y_true, y_pred = np.asarray(y_true, float), np.asarray(y_pred, float)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"shapes differ: {y_true.shape} vs {y_pred.shape}")
    return np.sqrt(np.mean((y_true - y_pred) ** 2, axis=0))


def mcrmse(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, dict[str, float]]:
    """``(n, 6)`` arrays in TARGETS order -> (overall MCRMSE, {target: RMSE})."""
    per = rmse_per_target(y_true, y_pred)
    return float(per.mean()), {t: float(v) for t, v in zip(TARGETS, per)}

