"""The task's metrics, each with its direction: MCRMSE (FB3: the mean over targets of each target's RMSE), RMSE
(pooled over every target's errors; with one target the same as MCRMSE) and QWK (quadratic weighted kappa of the
predictions mapped to each target's grid, averaged over the targets; higher is better).

    from stack.metrics import get_metric, score
    metric = get_metric("qwk")                 # metric.higher_is_better: True
    s = score(task, y, pred)                   # {"qwk": 0.71, "per_target": {...}, "rmse": ..., "rmse_per_target": ...}
    overall, per_target = mcrmse(y, pred)      # (n, k) arrays
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from stack.errors import StackError


def rmse_per_target(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Column-wise RMSE of two ``(n, k)`` arrays -> ``(k,)``."""
    y_true, y_pred = np.asarray(y_true, float), np.asarray(y_pred, float)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"shapes differ: {y_true.shape} vs {y_pred.shape}")
    return np.sqrt(np.mean((y_true - y_pred) ** 2, axis=0))


def mcrmse(y_true: np.ndarray, y_pred: np.ndarray, targets=None) -> tuple[float, dict[str, float]]:
    """``(n, k)`` arrays -> (MCRMSE, {target: RMSE}); ``targets`` names the columns (default FB3's six)."""
    from stack.task import FB3_TARGETS

    per = rmse_per_target(y_true, y_pred)
    return float(per.mean()), {t: float(v) for t, v in zip(targets or FB3_TARGETS, per)}


def grid_index(x: np.ndarray, scale) -> np.ndarray:
    """Values ``(n,)`` -> the index ``(n,)`` int of their nearest grid point of ``scale`` (clipped to its range)."""
    return np.rint((scale.clip(np.asarray(x, float)) - scale.min) / scale.step).astype(np.int64)


def qwk(y_true: np.ndarray, y_pred: np.ndarray, scale) -> float:
    """Quadratic weighted kappa of two score vectors ``(n,)``, both mapped to ``scale``'s grid (nearest point)."""
    return float(_qwk_resampled(grid_index(y_true, scale), grid_index(y_pred, scale), len(scale.levels), None)[0])


def _qwk_resampled(a: np.ndarray, b: np.ndarray, levels: int, idx: np.ndarray | None) -> np.ndarray:
    """QWK of grid indices ``a``, ``b`` ``(n,)`` on each resample ``idx`` ``(r, n)`` of the rows (None: once, all
    rows) -> ``(r,)``. 1 - sum(W C) / sum(W E) with W_ij = (i - j)^2, C the confusion counts and E the product of
    the two histograms over n; a set where both raters give one same score has kappa 1 if they agree, else 0."""
    idx = np.arange(len(a))[None, :] if idx is None else idx
    r, n = idx.shape
    codes = (a[idx] * levels + b[idx] + (np.arange(r) * levels * levels)[:, None]).ravel()
    counts = np.bincount(codes, minlength=r * levels * levels).reshape(r, levels, levels).astype(np.float64)
    i = np.arange(levels)
    W = (i[:, None] - i[None, :]) ** 2.0
    E = np.einsum("ri,rj->rij", counts.sum(2), counts.sum(1)) / n
    num, den = (counts * W).sum((1, 2)), (E * W).sum((1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, 1.0 - num / np.where(den > 0, den, 1.0), (num == 0).astype(np.float64))


@dataclass(frozen=True)
class Metric:
    """``per_target(y, pred, scales) -> (k,)``; ``overall(y, pred, scales, idx) -> (r,)`` on resamples ``idx``
    ``(r, n)`` of the rows (None: all rows once)."""

    name: str
    higher_is_better: bool
    per_target: Callable
    overall: Callable
    rmse_based: bool  # its per-target values are RMSEs (no RMSE needs reporting beside it)

    @property
    def better(self) -> str:
        return "higher" if self.higher_is_better else "lower"

    def gain(self, new: float, old: float) -> float:
        """How much ``new`` improves on ``old`` (positive: better)."""
        return new - old if self.higher_is_better else old - new

    def best(self, scores: dict) -> str:
        """The key of the best of ``{key: value}``."""
        return (max if self.higher_is_better else min)(scores, key=scores.get)

    def order(self, scores: dict) -> list:
        """Keys of ``{key: value}``, best first."""
        return sorted(scores, key=scores.get, reverse=self.higher_is_better)


def _rmse_overall(y, pred, scales, idx=None):
    sq = (np.asarray(y, float) - np.asarray(pred, float)) ** 2
    if idx is None:
        return np.sqrt(sq.mean(0)).mean(keepdims=True)
    return np.sqrt(sq[idx].mean(axis=1)).mean(axis=1)


def _pooled_overall(y, pred, scales, idx=None):
    sq = (np.asarray(y, float) - np.asarray(pred, float)) ** 2
    return np.sqrt(sq.mean(keepdims=True).ravel()) if idx is None else np.sqrt(sq[idx].mean(axis=(1, 2)))


def _qwk_per_target(y, pred, scales):
    return np.array([qwk(y[:, j], pred[:, j], s) for j, s in enumerate(scales)])


def _qwk_overall(y, pred, scales, idx=None):
    per = [_qwk_resampled(grid_index(y[:, j], s), grid_index(pred[:, j], s), len(s.levels), idx)
           for j, s in enumerate(scales)]
    return np.mean(per, axis=0)


METRICS = {
    "mcrmse": Metric("mcrmse", False, lambda y, p, s: rmse_per_target(y, p), _rmse_overall, True),
    "rmse": Metric("rmse", False, lambda y, p, s: rmse_per_target(y, p), _pooled_overall, True),
    "qwk": Metric("qwk", True, _qwk_per_target, _qwk_overall, False),
}


def get_metric(name: str) -> Metric:
    if name not in METRICS:
        raise StackError(f"unknown metric {name!r} (valid: {', '.join(METRICS)})")
    return METRICS[name]


def value(task, y: np.ndarray, pred: np.ndarray) -> float:
    """The task's metric of ``(n, k)`` predictions."""
    metric = get_metric(task.metric)
    if metric.name == "mcrmse":  # the exact expression FB3's figures were computed with
        return mcrmse(y, pred, task.targets)[0]
    return float(metric.overall(np.asarray(y, float), np.asarray(pred, float), task.scales)[0])


def score(task, y: np.ndarray, pred: np.ndarray) -> dict:
    """``{<metric>: overall, "per_target": {target: value}}`` of ``(n, k)`` predictions in the task's metric; a
    metric whose per-target values are not RMSEs (QWK) has ``rmse`` and ``rmse_per_target`` beside it."""
    metric = get_metric(task.metric)
    y, pred = np.asarray(y, float), np.asarray(pred, float)
    if y.shape != pred.shape:
        raise ValueError(f"shapes differ: {y.shape} vs {pred.shape}")
    per = metric.per_target(y, pred, task.scales)
    out = {metric.name: value(task, y, pred), "per_target": {t: float(v) for t, v in zip(task.targets, per)}}
    if not metric.rmse_based:
        out["rmse"] = float(_pooled_overall(y, pred, task.scales)[0])
        out["rmse_per_target"] = {t: float(v) for t, v in zip(task.targets, rmse_per_target(y, pred))}
    return out
