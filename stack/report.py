"""``stack report``: reports/report.md with PNG plots, from metrics/cv.json and the blend's OOF predictions.

Plots: each target's metric for each member and the blend, predicted vs true (OOF, nested) of the blend (one
panel per target, axes from its scale), the blend's weights, and the nested vs in-sample CV of every method tried.
The metric and its direction come from cv.json, the task's targets and scales from the saved blend.

    stack blend && stack report          # reports/report.md, reports/*.png
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from stack import paths
from stack.cache import atomic_write
from stack.errors import StackError
from stack.metrics import get_metric
from stack.task import Task, from_record


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _metric(cv: dict):
    """The metric cv.json was written in (FB3's MCRMSE when it names none)."""
    return get_metric(cv.get("metric", {}).get("name", "mcrmse"))


def _save(fig, out: Path) -> None:
    plt = _plt()
    fig.tight_layout()
    atomic_write(out, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)


def plot_per_target(cv: dict, out: Path, task: Task) -> None:
    plt, metric = _plt(), _metric(cv)
    rows = {n: s["per_target"] for n, s in cv["single"].items()}
    rows[f"blend ({cv['method']})"] = cv["blend"]["per_target"]
    fig, ax = plt.subplots(figsize=(max(5, 1.5 * task.k + 2), 4))
    width = 0.8 / len(rows)
    x = np.arange(task.k)
    for i, (name, per) in enumerate(rows.items()):
        ax.bar(x + (i - (len(rows) - 1) / 2) * width, [per[t] for t in task.targets], width, label=name,
               color="black" if name.startswith("blend") else None)
    ax.set_xticks(x, task.targets)
    ax.set_ylabel(f"{metric.name.upper()} ({metric.better} is better)")
    lo = min(min(p.values()) for p in rows.values())
    ax.set_ylim(lo * 0.9, None)
    ax.set_title(f"Per-target {metric.name.upper()}: stage-one members (OOF) and the blend (nested CV)")
    ax.legend(fontsize=8, ncol=min(len(rows), 4))
    _save(fig, out)


def plot_scatter(oof: pd.DataFrame, out: Path, task: Task, seed: int = 0) -> None:
    """One panel per target, its axes from the target's scale."""
    plt = _plt()
    rng = np.random.default_rng(seed)
    cols = min(3, task.k)
    rows = -(-task.k // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.2 * rows + 0.4), squeeze=False)
    for ax in axes.flat[task.k:]:
        ax.axis("off")
    for ax, t, scale in zip(axes.flat, task.targets, task.scales):
        true, pred = oof[f"true_{t}"].to_numpy(), oof[f"pred_{t}"].to_numpy()
        span = scale.max - scale.min
        jitter = (scale.step or span / 20) * 0.25
        ax.scatter(true + rng.uniform(-jitter, jitter, len(true)), pred, s=4, alpha=0.3)
        ax.plot([scale.min, scale.max], [scale.min, scale.max], color="black", lw=1)
        rmse = float(np.sqrt(np.mean((true - pred) ** 2)))
        ax.set_title(f"{t}  RMSE {rmse:.3f}", fontsize=10)
        ax.set_xlim(scale.min - 0.075 * span, scale.max + 0.075 * span)
        ax.set_ylim(scale.min - 0.075 * span, scale.max + 0.075 * span)
        ax.set_xlabel("true score (jittered)")
        ax.set_ylabel("blend prediction (OOF)")
    fig.suptitle("Blend: out-of-fold prediction vs true score")
    _save(fig, out)


def plot_weights(weights: dict, out: Path, title: str = "Blend weights per target") -> None:
    plt = _plt()
    targets = list(weights)
    models = list(next(iter(weights.values())))
    W = np.array([[weights[t][m] for m in models] for t in targets])
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(models), 1.4 + 0.4 * len(targets)))
    lim = max(abs(W).max(), 1e-9)
    im = ax.imshow(W, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
    for (i, j), w in np.ndenumerate(W):
        ax.text(j, i, f"{w:.2f}", ha="center", va="center", fontsize=9, color="white" if abs(w) > 0.6 * lim else "black")
    ax.set_xticks(range(len(models)), models, rotation=30, ha="right")
    ax.set_yticks(range(len(targets)), targets)
    fig.colorbar(im, ax=ax, label="weight")
    ax.set_title(title, fontsize=10)
    _save(fig, out)


def plot_methods(cv: dict, out: Path) -> None:
    plt, metric = _plt(), _metric(cv)
    m = metric.name
    methods = metric.order({name: r["nested"][m] for name, r in cv["methods"].items()})
    nested = [cv["methods"][name]["nested"][m] for name in methods]
    insample = [cv["methods"][name]["in_sample"][m] for name in methods]
    y = np.arange(len(methods))
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.6 * len(methods)))
    ax.barh(y - 0.2, nested, 0.4, label="nested (honest)")
    ax.barh(y + 0.2, insample, 0.4, label="in-sample (optimistic)", alpha=0.5)
    ax.axvline(cv["best_single"][m], color="black", ls="--", lw=1, label=f"best single ({cv['best_single']['model']})")
    ax.set_yticks(y, [f"{name} [{cv['methods'][name]['features']}]" for name in methods])
    ax.invert_yaxis()
    lo = min(nested + insample + [cv["best_single"][m]])
    ax.set_xlim(lo * 0.95, None)
    ax.set_xlabel(f"{m.upper()} ({metric.better} is better)")
    ax.set_title("Every method tried")
    ax.legend(fontsize=8, loc="lower right")
    _save(fig, out)


def summary_table(cv: dict) -> str:
    """Markdown table for README: every model's CV, every method's nested CV (in-sample beside it), the chosen blend."""
    metric = _metric(cv)
    m = metric.name
    lines = [f"| | features | CV {m.upper()} (nested) | in-sample |", "|---|---|---|---|"]
    for name in metric.order({n: s[m] for n, s in cv["single"].items()}):
        lines.append(f"| model `{name}` (stage-one OOF) | | {cv['single'][name][m]:.4f} | |")
    for name in metric.order({n: r["nested"][m] for n, r in cv["methods"].items()}):
        r = cv["methods"][name]
        chosen = " **(chosen)**" if name == cv["method"] else ""
        lines.append(f"| blend `{name}`{chosen} | {r['features']} | {r['nested'][m]:.4f} | {r['in_sample'][m]:.4f} |")
    return "\n".join(lines) + "\n"


def _ci(ci) -> str:
    return f" (95% bootstrap interval {ci[0]:.4f}-{ci[1]:.4f})" if ci else ""


def _gain(g) -> str:
    """A paired bootstrap gain, and whether it is inside the noise (its 95% interval holds 0)."""
    if not g:
        return ""
    noise = "inside the noise" if g["low"] <= 0 <= g["high"] else "outside the noise"
    return f" (paired 95% interval {g['low']:+.4f} to {g['high']:+.4f}; {noise})"


def _grid(cv: dict, metric) -> str:
    r, m = cv["rounding"], metric.name.upper()
    if not r["tried"]:
        return f"- mapping to each target's grid: not tried (nested {m} rounded {r['nested_rounded']:.4f})\n"
    applied = {False: "none (the continuous predictions)", "round": "plain rounding",
               "thresholds": "thresholds fitted on out-of-fold predictions"}[r["applied"]]
    return (f"- mapping to each target's grid, by nested CV: {applied} (nested {m} rounded "
            f"{r['nested_rounded']:.4f}, thresholds {r['nested_thresholds']:.4f})\n")


def intervals_section(cv: dict) -> str:
    """How sure: the nested coverage and mean width of the blend's per-essay intervals, beside constant-width ones,
    and coverage by predicted level."""
    iv = cv.get("intervals")
    if not iv:
        return ""
    lines = [f"## How sure: {iv['level']:.0%} intervals\n\n{iv['method']}; constant-width intervals (the same "
             "calibration, one width for every essay) beside them. Normalized: whether the saved blend's intervals "
             "scale with each essay's difficulty for that target (kept only where that narrows them).\n\n| target | "
             "coverage | mean width | constant width: coverage | its mean width | normalized |\n"
             "|---|---|---|---|---|---|\n"]
    for t, r in iv["per_target"].items():
        lines.append(f"| {t} | {r['coverage']:.3f} | {r['width']:.3f} | {r['constant_coverage']:.3f} | "
                     f"{r['constant_width']:.3f} | {'yes' if r.get('normalized') else 'no'} |\n")
    lines.append(f"| **all** | **{iv['coverage']:.3f}** | **{iv['width']:.3f}** | {iv['constant_coverage']:.3f} | "
                 f"{iv['constant_width']:.3f} | |\n\nCoverage by predicted level (n):\n\n")
    for t, r in iv["per_target"].items():
        levels = ", ".join(f"{lv}: {v['coverage']:.2f} ({v['n']})" for lv, v in r["by_level"].items())
        lines.append(f"- {t}: {levels}\n")
    return "".join(lines) + "\n"


def audit_section(oof: pd.DataFrame, task: Task, out: Path) -> str:
    """How fair: the audit (stack.audit) of the blend's nested OOF predictions against the human scores, by each
    ``keep`` column of the training data; its DSM plot beside the report."""
    from stack.audit import audit, markdown, plot_dsm

    by = [c for c in task.keep if c in oof.columns]
    if not by:
        return ""
    labels = oof[[task.id, *by]].assign(**{t: oof[f"true_{t}"] for t in task.targets})
    preds = oof[[task.id]].assign(**{t: oof[f"pred_{t}"] for t in task.targets})
    result = audit(task, labels, preds, by)
    plot_dsm(result, out)
    body = markdown(result, task).replace("# Agreement and fairness audit", "## How fair: agreement and audit by "
                                          + ", ".join(by) + " (nested OOF predictions)").replace("\n## ", "\n### ")
    return body.replace("\n### How fair", "\n## How fair") + f"\n![DSM by group]({out.name})\n\n"


def markdown(cv: dict, images: dict[str, str], task: Task, seconds: dict | None = None) -> str:
    """report.md text from the cv.json dict, {name: image file name}, the task and {method: seconds} (blend.json)."""
    seconds = seconds or {}
    metric = _metric(cv)
    m = metric.name
    head = (f"| | {m.upper()} | " + " | ".join(task.targets) + " |\n|---|---|" + "---|" * task.k + "\n")

    def row(name, s):
        return f"| {name} | {s[m]:.4f} | " + " | ".join(f"{s['per_target'][t]:.4f}" for t in task.targets) + " |\n"

    b = cv["blend"]
    rmse = f"; RMSE {b['rmse']:.4f}" if "rmse" in b else ""
    lines = [
        "# Stage-two report\n\n",
        f"Blend **{cv['method']}** on `{cv['features']}` of {', '.join(cv['models'])} ({cv['n_rows']} essays, "
        f"{cv['n_folds']} folds, the folds of stage one). Metric: {m.upper()}, {metric.better} is better.\n\n",
        f"- nested CV {m.upper()} **{b[m]:.4f}**{_ci(b.get('ci95'))} (blender fitted without the fold it scores: "
        f"the honest figure{rmse})\n",
        f"- in-sample {m.upper()} {b['in_sample'][m]:.4f} (fitted on all OOF rows; optimistic by {b['optimism']:.4f})\n",
        f"- best single member {cv['best_single']['model']} {cv['best_single'][m]:.4f}: the blend gains "
        f"{cv['gain_over_best_single']:.4f}{_gain(cv.get('gain_over_best_single_ci95'))}\n",
        "- the members, their settings and the method were chosen by nested CV on these same essays: the figures "
        "carry a small selection effect\n",
        _grid(cv, metric), "\n",
        "## Models and blend\n\n", head,
        *[row(n, s) for n, s in cv["single"].items()], row(f"**blend: {cv['method']}** (nested)", b),
        f"\n![per-target {m}]({images['per_target']})\n\n",
        "## Summary (for README)\n\n", summary_table(cv), "\n",
        "## Every method tried\n\n| method | features | nested | in-sample | chosen's gain over it (paired 95%) | seconds |\n"
        "|---|---|---|---|---|---|\n",
        *[f"| {name} | {cv['methods'][name]['features']} | {cv['methods'][name]['nested'][m]:.4f} | "
          f"{cv['methods'][name]['in_sample'][m]:.4f} | "
          f"{_gain(cv['methods'][name].get('gain_of_chosen')).strip(' ;()') or '-'} | "
          f"{seconds.get(name, float('nan')):.1f} |\n"
          for name in metric.order({n: r["nested"][m] for n, r in cv["methods"].items()})],
        f"\n![methods]({images['methods']})\n\n",
    ]
    lines.append(intervals_section(cv))
    if "weights" in images:
        lines.append(f"## Blend weights\n\n![weights]({images['weights']})\n\n")
    if "scatter" in images:
        lines.append(f"## Predicted vs true (OOF)\n\n![scatter]({images['scatter']})\n")
    return "".join(lines)


def write_report(cv_path: Path | None = None, oof_path: Path | None = None, out: Path | None = None) -> Path:
    """reports/report.md + PNGs next to it, from metrics/cv.json, models/blend/oof.parquet and blend.json (the
    task: targets and scales) -> path of the .md."""
    cv_path = Path(cv_path or paths.cv_metrics())
    oof_path = Path(oof_path or paths.blend_dir() / "oof.parquet")
    out = Path(out or paths.report())
    if not cv_path.is_file():
        raise StackError(f"{cv_path}: not found; run `stack blend` first")
    cv = json.loads(cv_path.read_text())
    missing = [k for k in ("blend", "single", "methods", "best_single") if k not in cv]
    if missing:
        raise StackError(f"{cv_path}: no {missing[0]!r} (written by an older `stack blend`); rerun `stack blend`")
    blend_json = paths.blend_dir() / "blend.json"
    saved = json.loads(blend_json.read_text()) if blend_json.is_file() else {}
    task = from_record(saved.get("task"), str(blend_json))
    out.parent.mkdir(parents=True, exist_ok=True)
    images = {"per_target": "per_target_rmse.png", "methods": "methods.png"}
    plot_per_target(cv, out.parent / images["per_target"], task)
    plot_methods(cv, out.parent / images["methods"])
    if cv.get("weights"):
        images["weights"] = "weights.png"
        title = "Blend weights per target" if cv["method"] in ("hill", "nelder-mead") else "Weights of the prediction member"
        plot_weights(cv["weights"], out.parent / images["weights"], title)
    audit = ""
    if oof_path.is_file():
        images["scatter"] = "oof_scatter.png"
        oof = pd.read_parquet(oof_path)
        plot_scatter(oof, out.parent / images["scatter"], task)
        audit = audit_section(oof, task, out.parent / "audit_dsm.png")
    text = markdown(cv, images, task, saved.get("seconds", {})) + audit
    atomic_write(out, lambda p: p.write_text(text, encoding="utf-8"))
    return out
