"""Per-essay intervals from the blend's out-of-fold residuals: normalized cross-conformal prediction.

For each target, an essay's interval is ``pred ± q·σ(d)``, clipped to the target's range and (on a grid) widened
outward to grid points. ``σ(d) = exp(w·d)`` models how large the essay's error tends to be from its *difficulty*
``d``: where its prediction sits on the scale, how much the blend's members disagree on it, and its length. ``q`` is a quantile of the calibration essays' normalised scores ``(|y - pred| - g) / σ(d)``, where
``g`` is the grid step (an interval widened outward to the grid covers a grid label ``y`` exactly when
``q·σ >= |y - pred| - step``, see ``_bounds``) or 0 for a continuous target. So unusual essays get wider intervals than typical ones,
and coverage holds by construction (conformal), not by assumption. Per target, σ is kept only where it narrows
the calibration essays' intervals; where errors do not vary with difficulty, the interval has constant width.

Honest by construction: the calibration predictions are the blend's nested OOF predictions, and each fold's scores
come from a σ fitted on the other folds (cross-fitting); the σ applied to new essays is fitted on every row. The
level is chosen when scoring: the scores are kept, ``q`` is their ``⌈level·(n+1)⌉``-th smallest.

    iv = Intervals.fit(task, y, pred, D, fold)               # y, pred (n, k); D (n, k, 4) from difficulty()
    lo, hi = iv.bounds(pred_new, D_new, level=0.9)           # (m, k) each
    cover = nested_coverage(task, y, pred, D, fold, 0.9)     # calibrate on other folds, measure on each fold
"""

from __future__ import annotations

import numpy as np

from stack.state import savable

ALPHA = 1.0  # ridge penalty of the log-residual model (standardised features)


def difficulty(task, pred: np.ndarray, member_preds: list[np.ndarray], texts) -> np.ndarray:
    """Difficulty features ``(n, k, 4)`` of ``n`` essays: each target's predicted level ``pred`` ``(n, k)`` relative
    to the middle of its range (in half-ranges) and its square (errors grow with the level on FB3, and at the
    ends of a scale elsewhere), the log of the spread (std, in half-ranges) of the members' predictions
    ``[(n, k), ...]`` (errors scale with it, so its log enters the log-residual model linearly), and the essay's
    log word count."""
    half = np.array([(s.max - s.min) / 2 for s in task.scales])
    level = (np.asarray(pred, float) - task.centre) / half
    spread = np.log(np.std(np.stack([np.asarray(p, float) for p in member_preds]), axis=0) / half + 0.01)
    words = np.log1p([len(str(t).split()) for t in texts])[:, None] * np.ones((1, task.k))
    return np.stack([level, level**2, spread, words], axis=-1)


def _gap(task) -> np.ndarray:
    """Per target, how much a widened-to-grid interval adds on each side at most (the step; 0 if continuous)."""
    return np.array([s.step or 0.0 for s in task.scales])


def _fit_sigma(D: np.ndarray, resid: np.ndarray, floor: float) -> np.ndarray:
    """Ridge of log(|resid| + floor) on standardised ``D`` ``(n, p)`` -> [mean (p), scale (p), intercept, w (p)]."""
    mean, scale = D.mean(0), D.std(0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    Z = (D - mean) / scale
    t = np.log(np.abs(resid) + floor)
    w = np.linalg.solve(Z.T @ Z + ALPHA * np.eye(Z.shape[1]), Z.T @ (t - t.mean()))
    return np.concatenate([mean, scale, [t.mean()], w])


def _sigma(params: np.ndarray, D: np.ndarray) -> np.ndarray:
    p = D.shape[-1]
    mean, scale, b, w = params[:p], params[p:2 * p], params[2 * p], params[2 * p + 1:]
    return np.exp(b + np.clip(((D - mean) / scale) @ w, -3.0, 3.0))  # within e^3 (20x) of the typical error


def _floor(task, resid: np.ndarray) -> np.ndarray:
    """Added to |residual| before its log (residuals can be 0): a quarter of the grid step, or a tenth of the
    median |residual| of a continuous target."""
    med = np.median(np.abs(resid), axis=0)
    return np.array([0.25 * s.step if s.step else max(0.1 * m, 1e-9) for s, m in zip(task.scales, med)])


def cross_sigma(task, y, pred, D, fold) -> np.ndarray:
    """σ(d) ``(n, k)`` of each row from a σ model fitted on the other folds (two interleaved halves when the rows
    hold one fold: nested coverage with 2 folds calibrates on one)."""
    resid = np.asarray(y, float) - np.asarray(pred, float)
    floor = _floor(task, resid)
    out = np.empty_like(resid)
    fold = fold if len(np.unique(fold)) > 1 else np.arange(len(fold)) % 2
    for k in np.unique(fold):
        held = fold == k
        for j in range(task.k):
            out[held, j] = _sigma(_fit_sigma(D[~held, j], resid[~held, j], floor[j]), D[held, j])
    return out


def quantile(scores: np.ndarray, level: float) -> np.ndarray:
    """Per column of ``scores`` ``(n, k)``, the ``⌈level·(n+1)⌉``-th smallest (inf if that exceeds n): the
    conformal quantile that covers a new essay with probability at least ``level``."""
    n = len(scores)
    rank = int(np.ceil(level * (n + 1)))
    if rank > n:
        return np.full(scores.shape[1], np.inf)
    return np.sort(scores, axis=0)[rank - 1]


def _bounds(task, pred, half_width) -> tuple[np.ndarray, np.ndarray]:
    """``pred ± half_width`` ``(n, k)``, widened outward to each target's grid and clipped to its range. On a grid
    the low end is the lowest grid point at or above ``pred - half_width - step`` (the point below ``pred -
    half_width``, or one more where that lands on the grid), so a grid label is covered exactly when
    ``|label - pred| - step <= half_width``: the score ``Intervals.fit`` calibrates."""
    lo, hi = np.asarray(pred, float) - half_width, np.asarray(pred, float) + half_width
    for j, s in enumerate(task.scales):
        if s.step is not None:
            lo[:, j] = s.min + s.step * np.ceil(np.round((lo[:, j] - s.step - s.min) / s.step, 9))
            hi[:, j] = s.min + s.step * np.floor(np.round((hi[:, j] + s.step - s.min) / s.step, 9))
    return task.clip(lo), task.clip(hi)


@savable
class Intervals:
    """The calibration of a blend's intervals: the calibration essays' scores ``(n, k)`` (normalised by a cross-fitted
    σ where ``use_sigma``), and the σ models fitted on every calibration row ``(k, 3p + 1)``. Per target, σ is used
    only where it narrows the calibration essays' intervals (at ``CHOICE_LEVEL``): on a data set whose errors do
    not vary with the difficulty signals, the constant-width interval is the better one."""

    CHOICE_LEVEL = 0.9

    def __init__(self, task_record: dict, scores: np.ndarray, sigma: np.ndarray | None, use_sigma: list[bool]):
        self.task_record, self.scores, self.sigma, self.use_sigma = task_record, scores, sigma, list(use_sigma)

    @classmethod
    def fit(cls, task, y, pred, D, fold, normalized: bool = True) -> Intervals:
        """``normalized`` False: constant width for every target (the baseline nested_coverage reports)."""
        resid = np.asarray(y, float) - np.asarray(pred, float)
        plain = np.abs(resid) - _gap(task)
        if not normalized:
            return cls(task.record(), plain, None, [False] * task.k)
        sig = cross_sigma(task, y, pred, D, fold)
        scaled = plain / sig
        widths = [np.subtract(*_bounds(task, pred, q * w)[::-1]).mean(axis=0)  # the calibration rows' own
                  for q, w in ((quantile(scaled, cls.CHOICE_LEVEL), sig), (quantile(plain, cls.CHOICE_LEVEL), 1.0))]
        use = [bool(a < b) for a, b in zip(*widths)]
        scores = np.where(use, scaled, plain)
        sigma = np.stack([_fit_sigma(D[:, j], resid[:, j], f) for j, f in enumerate(_floor(task, resid))])
        return cls(task.record(), scores, sigma, use)

    def half_width(self, D: np.ndarray, level: float) -> np.ndarray:
        """``q·σ(d)`` ``(m, k)`` (σ ≡ 1 for a target without) for essays of difficulty ``D`` ``(m, k, p)``."""
        q = np.maximum(quantile(self.scores, level), 0.0)
        if self.sigma is not None and self.sigma.shape[1] != 3 * D.shape[-1] + 1:
            from stack.errors import StackError

            raise StackError("the saved intervals were fitted on other difficulty features (another version of "
                             "stack); rerun `stack blend` (or re-export the bundle)")
        return np.stack([q[j] * (_sigma(self.sigma[j], D[:, j]) if use else np.ones(len(D)))
                         for j, use in enumerate(self.use_sigma)], axis=1)

    def bounds(self, pred: np.ndarray, D: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) ``(m, k)`` each: the intervals of predictions ``pred`` at coverage ``level``."""
        from stack.task import from_record

        if not 0 < level < 1:
            raise ValueError(f"interval level must be between 0 and 1, got {level}")
        return _bounds(from_record(self.task_record), pred, self.half_width(D, level))

    def to_state(self) -> dict:
        return {"task_record": self.task_record, "scores": np.asarray(self.scores, np.float64),
                "sigma": None if self.sigma is None else np.asarray(self.sigma, np.float64),
                "use_sigma": self.use_sigma}

    @classmethod
    def from_state(cls, state: dict):
        return cls(state["task_record"], state["scores"], state["sigma"], state["use_sigma"])


def _by_level(task, pred: np.ndarray, covered: np.ndarray) -> dict:
    """Per target, coverage by predicted level: its grid points (continuous: quintiles of the predictions)."""
    out = {}
    for j, (t, s) in enumerate(zip(task.targets, task.scales)):
        if s.step is not None:
            key = s.round(pred[:, j])
            labels = [f"{v:g}" for v in key]
        else:
            edges = np.quantile(pred[:, j], [0.2, 0.4, 0.6, 0.8])
            bins = np.searchsorted(edges, pred[:, j], side="right")
            labels = [f"q{b + 1}" for b in bins]
        rows = {}
        for label in sorted(set(labels), key=lambda v: (v[0] == "q", float(v.lstrip("q")))):
            mask = np.array([lab == label for lab in labels])
            rows[label] = {"n": int(mask.sum()), "coverage": float(covered[mask, j].mean())}
        out[t] = rows
    return out


def nested_coverage(task, y, pred, D, fold, level: float) -> dict:
    """Coverage and mean width of ``level`` intervals measured honestly: for each fold, intervals calibrated on the
    other folds (σ cross-fitted among them) and applied to it; normalized intervals beside constant-width ones."""
    y, pred = np.asarray(y, float), np.asarray(pred, float)
    result = {}
    for name, normalized in (("normalized", True), ("constant", False)):
        lo, hi = np.empty_like(pred), np.empty_like(pred)
        for k in np.unique(fold):
            held = fold == k
            iv = Intervals.fit(task, y[~held], pred[~held], D[~held], fold[~held], normalized)
            lo[held], hi[held] = iv.bounds(pred[held], D[held], level)
        covered = (lo - 1e-9 <= y) & (y <= hi + 1e-9)
        result[name] = {"covered": covered, "width": hi - lo}
    norm, const = result["normalized"], result["constant"]
    per_target = {t: {"coverage": float(norm["covered"][:, j].mean()), "width": float(norm["width"][:, j].mean()),
                      "constant_coverage": float(const["covered"][:, j].mean()),
                      "constant_width": float(const["width"][:, j].mean())}
                  for j, t in enumerate(task.targets)}
    for t, rows in _by_level(task, pred, norm["covered"]).items():
        per_target[t]["by_level"] = rows
    return {"level": level, "method": "normalized cross-conformal (nested: calibrated without the fold it scores)",
            "coverage": float(norm["covered"].mean()), "width": float(norm["width"].mean()),
            "constant_coverage": float(const["covered"].mean()), "constant_width": float(const["width"].mean()),
            "per_target": per_target}
