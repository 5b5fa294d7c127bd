"""The task: which columns hold an essay's id and text, the targets with their scales, the metric, and the
training-data columns kept for reports. Read from params.yaml ``task:``; without one, FB3: ``text_id``,
``full_text``, six traits on 1.0-5.0 in steps of 0.5, MCRMSE. Every stage is handed the task; no other module
names targets, scales or columns.

    from stack.task import load_task
    task = load_task(params)                 # params: stack.config.Params
    task.targets, task.pred_cols             # ("cohesion", ...), ("pred_cohesion", ...)
    task.clip(pred); task.round(pred)        # (n, k) -> (n, k), per target's scale
    task.record()                            # JSON-able dict: saved with blends and bundles

The FB3 task is recorded by its absence in the fingerprints of folds and member caches (``fingerprint_meta``):
that is how every cache written before tasks existed reads, so FB3's caches stay byte-identical; any other
task adds a ``task`` hash that changes with its columns, targets and scales.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from stack.config import sha256_json
from stack.errors import StackError

FB3_TARGETS = ("cohesion", "syntax", "vocabulary", "phraseology", "grammar", "conventions")
METRICS = ("mcrmse", "rmse", "qwk")  # stack.metrics defines them; listed here to check params.yaml early
TASK_KEYS = ("id", "text", "targets", "metric", "keep")
SCALE_KEYS = ("min", "max", "step")


@dataclass(frozen=True)
class Scale:
    """A target's range ``[min, max]`` and its grid ``step`` (None: continuous)."""

    min: float
    max: float
    step: float | None = None

    @property
    def levels(self) -> np.ndarray:
        """The grid's points ``(L,)`` from min to max (a continuous scale has none)."""
        if self.step is None:
            return np.empty(0)
        n = int(round((self.max - self.min) / self.step))
        return self.min + self.step * np.arange(n + 1)

    def clip(self, x: np.ndarray) -> np.ndarray:
        return np.clip(x, self.min, self.max)

    def round(self, x: np.ndarray) -> np.ndarray:
        """Clipped, then (on a grid) rounded to the nearest grid point."""
        x = self.clip(x)
        if self.step is None:
            return x
        return np.clip(np.round((x - self.min) / self.step) * self.step + self.min, self.min, self.max)

    def on_grid(self, x: np.ndarray) -> np.ndarray:
        """Which values of ``x`` are grid points (every value, on a continuous scale)."""
        if self.step is None:
            return np.ones(np.shape(x), bool)
        q = (np.asarray(x, float) - self.min) / self.step
        return np.isclose(q, np.round(q))

    def to_json(self) -> dict:
        return {"min": self.min, "max": self.max, "step": self.step}


FB3_SCALE = Scale(1.0, 5.0, 0.5)


@dataclass(frozen=True)
class Task:
    id: str = "text_id"
    text: str = "full_text"
    targets: tuple[str, ...] = FB3_TARGETS
    scales: tuple[Scale, ...] = (FB3_SCALE,) * len(FB3_TARGETS)
    metric: str = "mcrmse"
    keep: tuple[str, ...] = ()
    where: str = field(default="params.yaml", compare=False)  # the file it came from, for messages

    @property
    def k(self) -> int:
        return len(self.targets)

    @property
    def pred_cols(self) -> tuple[str, ...]:
        """The member caches' prediction columns, one per target."""
        return tuple(f"pred_{t}" for t in self.targets)

    def scale(self, target: str) -> Scale:
        return self.scales[self.targets.index(target)]

    @property
    def gridded(self) -> bool:
        """Every target on a grid (QWK and grid mapping need one)."""
        return all(s.step is not None for s in self.scales)

    @property
    def centre(self) -> np.ndarray:
        """The middle of each target's range ``(k,)``: where a fine-tuned head's bias starts."""
        return np.array([(s.min + s.max) / 2 for s in self.scales])

    def y(self, df) -> np.ndarray:
        """The targets of a frame ``(n, k)`` float64, in task order."""
        return df[list(self.targets)].to_numpy(np.float64)

    def clip(self, pred: np.ndarray) -> np.ndarray:
        """``(n, k)`` predictions clipped to each target's range (the array's memory layout kept: reductions over
        it then add in the same order, to the last bit)."""
        lo, hi = np.array([s.min for s in self.scales]), np.array([s.max for s in self.scales])
        return np.clip(np.asarray(pred, np.float64), lo, hi)

    def round(self, pred: np.ndarray) -> np.ndarray:
        """``(n, k)`` predictions clipped and rounded to each target's grid (continuous targets: clipped)."""
        out = self.clip(pred).copy(order="K")
        for j, s in enumerate(self.scales):
            out[:, j] = s.round(out[:, j])
        return out

    def is_fb3(self) -> bool:
        return self == Task()

    def record(self) -> dict:
        """Everything the task says, as JSON: saved with a blend and in a bundle's manifest."""
        return {"id": self.id, "text": self.text, "targets": {t: s.to_json() for t, s in zip(self.targets, self.scales)},
                "metric": self.metric, "keep": list(self.keep)}

    def stage_one(self) -> str:
        """Hash of what decides stage one's outputs: the columns read, the targets and their scales (the metric and
        ``keep`` only change stage two)."""
        return sha256_json({k: v for k, v in self.record().items() if k not in ("metric", "keep")})

    def fingerprint_meta(self) -> dict:
        """What a folds or member cache's meta records of the task: nothing for FB3 (as before tasks), else the
        fingerprint (hash) of its stage-one part."""
        return {} if Task(self.id, self.text, self.targets, self.scales) == Task() else {"task": self.stage_one()}


def from_record(record: dict | None, where: str = "") -> Task:
    """The task a blend or bundle saved; ``None`` (saved before tasks existed) is FB3."""
    if record is None:
        return Task(where=where)
    return build_task(record, where)


def _number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise StackError(f"{where}: expected a number, got {value!r}")
    return float(value)


def _name(value, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise StackError(f"{where}: expected a column name, got {value!r}")
    return value


def _scale(raw, where: str) -> Scale:
    if not isinstance(raw, dict):
        raise StackError(f"{where}: expected {{min: ..., max: ..., step: ...}}, got {raw!r}")
    unknown = sorted(set(raw) - set(SCALE_KEYS))
    if unknown:
        raise StackError(f"{where}: unknown key {unknown[0]!r} (valid keys: {', '.join(SCALE_KEYS)})")
    missing = [k for k in ("min", "max") if k not in raw]
    if missing:
        raise StackError(f"{where}: no {missing[0]!r}; give the target's range as {{min: 1, max: 6, step: 1}}")
    lo, hi = _number(raw["min"], f"{where}: min"), _number(raw["max"], f"{where}: max")
    if not lo < hi:
        raise StackError(f"{where}: min {lo:g} must be below max {hi:g}")
    step = raw.get("step")
    if step is not None:
        step = _number(step, f"{where}: step")
        n = (hi - lo) / step if step > 0 else 0.0
        if step <= 0 or not math.isclose(n, round(n), abs_tol=1e-9):
            raise StackError(f"{where}: step {step:g} must be positive and divide max - min ({hi - lo:g}); "
                             "use step: null for a continuous target")
    return Scale(lo, hi, step)


def build_task(raw, where: str = "params.yaml") -> Task:
    """A Task from a params.yaml ``task:`` mapping (or a saved record); every key checked, one line per mistake."""
    if raw is None:
        return Task(where=where)
    if not isinstance(raw, dict):
        raise StackError(f"{where}: task: expected a mapping (id, text, targets, metric, keep), got {raw!r}")
    unknown = sorted(set(raw) - set(TASK_KEYS))
    if unknown:
        raise StackError(f"{where}: task: unknown key {unknown[0]!r} (valid keys: {', '.join(TASK_KEYS)})")
    default = Task()
    ident = _name(raw.get("id", default.id), f"{where}: task: id")
    text = _name(raw.get("text", default.text), f"{where}: task: text")
    targets, scales = default.targets, default.scales
    if "targets" in raw:
        if not isinstance(raw["targets"], dict) or not raw["targets"]:
            raise StackError(f"{where}: task: targets: expected one or more `name: {{min, max, step}}` entries, "
                             f"got {raw['targets']!r}")
        targets = tuple(_name(t, f"{where}: task: targets") for t in raw["targets"])
        scales = tuple(_scale(s, f"{where}: task: targets: {t}") for t, s in raw["targets"].items())
    metric = raw.get("metric", default.metric)
    if metric not in METRICS:
        raise StackError(f"{where}: task: metric {metric!r} is not one of {', '.join(METRICS)}")
    if metric == "qwk":
        continuous = [t for t, s in zip(targets, scales) if s.step is None]
        if continuous:
            raise StackError(f"{where}: task: metric qwk needs every target on a grid, but {continuous[0]!r} has "
                             "step: null; give it a step or use metric: rmse")
    keep = raw.get("keep") or []
    if isinstance(keep, str):
        keep = [keep]
    if not isinstance(keep, list):
        raise StackError(f"{where}: task: keep: expected a list of column names, got {keep!r}")
    keep = tuple(_name(c, f"{where}: task: keep") for c in keep)
    names = [ident, text, *targets]
    clash = next((c for c in names + list(keep) if (names + list(keep)).count(c) > 1), None)
    if clash is not None:
        raise StackError(f"{where}: task: column {clash!r} is named twice (id, text, targets and keep must differ)")
    return Task(ident, text, targets, scales, metric, keep, where)


def load_task(params) -> Task:
    """The task of ``params`` (a stack.config.Params): its ``task:`` section, else FB3."""
    return build_task(params.task, params.source)
