"""``stack report``: reports/report.md with PNG plots, from metrics/cv.json and the blend's OOF predictions.

Plots: per-target RMSE of each model and the blend, predicted vs true (OOF, nested) of the blend, the blend's
weights, and the nested vs in-sample CV of every method tried.

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
from stack.schema import TARGETS


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_per_target(cv: dict, out: Path) -> None:
    plt = _plt()
    rows = {n: s["per_target"] for n, s in cv["single"].items()}
    rows[f"blend ({cv['method']})"] = cv["blend"]["per_target"]
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(rows)
    x = np.arange(len(TARGETS))
    for i, (name, per) in enumerate(rows.items()):
        ax.bar(x + (i - (len(rows) - 1) / 2) * width, [per[t] for t in TARGETS], width, label=name,
               color="black" if name.startswith("blend") else None)
    ax.set_xticks(x, TARGETS)
    ax.set_ylabel("RMSE (lower is better)")
    lo = min(min(p.values()) for p in rows.values())
    ax.set_ylim(lo * 0.9, None)
    ax.set_title("Per-target RMSE: stage-one models (OOF) and the blend (nested CV)")
    ax.legend(fontsize=8, ncol=min(len(rows), 4))
    fig.tight_layout()
    atomic_write(out, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)


def plot_scatter(oof: pd.DataFrame, out: Path, seed: int = 0) -> None:
    plt = _plt()
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(2, 3, figsize=(10, 6.5), sharex=True, sharey=True)
    for ax, t in zip(axes.flat, TARGETS):
        true, pred = oof[f"true_{t}"].to_numpy(), oof[f"pred_{t}"].to_numpy()
        ax.scatter(true + rng.uniform(-0.12, 0.12, len(true)), pred, s=4, alpha=0.3)
        ax.plot([1, 5], [1, 5], color="black", lw=1)
        rmse = float(np.sqrt(np.mean((true - pred) ** 2)))
        ax.set_title(f"{t}  RMSE {rmse:.3f}", fontsize=10)
        ax.set_xlim(0.7, 5.3)
        ax.set_ylim(0.7, 5.3)
    for ax in axes[1]:
        ax.set_xlabel("true score (jittered)")
    for ax in axes[:, 0]:
        ax.set_ylabel("blend prediction (OOF)")
    fig.suptitle("Blend: out-of-fold prediction vs true score")
    fig.tight_layout()
    atomic_write(out, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)


def plot_weights(weights: dict, out: Path, title: str = "Blend weights per target") -> None:
    plt = _plt()
    models = list(next(iter(weights.values())))
    W = np.array([[weights[t][m] for m in models] for t in TARGETS])
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(models), 3.8))
    lim = max(abs(W).max(), 1e-9)
    im = ax.imshow(W, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
    for (i, j), w in np.ndenumerate(W):
        ax.text(j, i, f"{w:.2f}", ha="center", va="center", fontsize=9, color="white" if abs(w) > 0.6 * lim else "black")
    ax.set_xticks(range(len(models)), models, rotation=30, ha="right")
    ax.set_yticks(range(len(TARGETS)), TARGETS)
    fig.colorbar(im, ax=ax, label="weight")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    atomic_write(out, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)


def plot_methods(cv: dict, out: Path) -> None:
    plt = _plt()
    methods = sorted(cv["methods"], key=lambda m: cv["methods"][m]["nested"]["mcrmse"])
    nested = [cv["methods"][m]["nested"]["mcrmse"] for m in methods]
    insample = [cv["methods"][m]["in_sample"]["mcrmse"] for m in methods]
    y = np.arange(len(methods))
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.6 * len(methods)))
    ax.barh(y - 0.2, nested, 0.4, label="nested (honest)")
    ax.barh(y + 0.2, insample, 0.4, label="in-sample (optimistic)", alpha=0.5)
    ax.axvline(cv["best_single"]["mcrmse"], color="black", ls="--", lw=1, label=f"best single ({cv['best_single']['model']})")
    ax.set_yticks(y, [f"{m} [{cv['methods'][m]['features']}]" for m in methods])
    ax.invert_yaxis()
    lo = min(nested + insample + [cv["best_single"]["mcrmse"]])
    ax.set_xlim(lo * 0.95, None)
    ax.set_xlabel("MCRMSE (lower is better)")
    ax.set_title("Every method tried")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    atomic_write(out, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)


def summary_table(cv: dict) -> str:
    """Markdown table for README: every model's CV, every method's nested CV (in-sample beside it), the chosen blend."""
    lines = ["| | features | CV MCRMSE (nested) | in-sample |", "|---|---|---|---|"]
    for name, s in sorted(cv["single"].items(), key=lambda kv: kv[1]["mcrmse"]):
        lines.append(f"| model `{name}` (stage-one OOF) | | {s['mcrmse']:.4f} | |")
    for m, r in sorted(cv["methods"].items(), key=lambda kv: kv[1]["nested"]["mcrmse"]):
        chosen = " **(chosen)**" if m == cv["method"] else ""
        lines.append(f"| blend `{m}`{chosen} | {r['features']} | {r['nested']['mcrmse']:.4f} | {r['in_sample']['mcrmse']:.4f} |")
    return "\n".join(lines) + "\n"


def _ci(ci) -> str:
    return f" (95% bootstrap interval {ci[0]:.4f}-{ci[1]:.4f})" if ci else ""


def _gain(g) -> str:
    """A paired bootstrap gain, and whether it is inside the noise (its 95% interval holds 0)."""
    if not g:
        return ""
    noise = "inside the noise" if g["low"] <= 0 <= g["high"] else "outside the noise"
    return f" (paired 95% interval {g['low']:+.4f} to {g['high']:+.4f}; {noise})"


def markdown(cv: dict, images: dict[str, str], seconds: dict | None = None) -> str:
    """report.md text from the cv.json dict, {name: image file name} and {method: seconds} (blend.json)."""
    seconds = seconds or {}
    head = "| | MCRMSE | " + " | ".join(TARGETS) + " |\n|---|---|" + "---|" * len(TARGETS) + "\n"

    def row(name, s):
        return f"| {name} | {s['mcrmse']:.4f} | " + " | ".join(f"{s['per_target'][t]:.4f}" for t in TARGETS) + " |\n"

    b = cv["blend"]
    lines = [
        "# Stage-two report\n\n",
        f"Blend **{cv['method']}** on `{cv['features']}` of {', '.join(cv['models'])} ({cv['n_rows']} essays, "
        f"{cv['n_folds']} folds, the folds of stage one).\n\n",
        f"- nested CV MCRMSE **{b['mcrmse']:.4f}**{_ci(b.get('ci95'))} (blender fitted without the fold it scores: "
        "the honest figure)\n",
        f"- in-sample MCRMSE {b['in_sample']['mcrmse']:.4f} (fitted on all OOF rows; optimistic by {b['optimism']:.4f})\n",
        f"- best single member {cv['best_single']['model']} {cv['best_single']['mcrmse']:.4f}: the blend gains "
        f"{cv['gain_over_best_single']:.4f}{_gain(cv.get('gain_over_best_single_ci95'))}\n",
        "- the members, their settings and the method were chosen by nested CV on these same essays: the figures "
        "carry a small selection effect\n",
        f"- rounding to the 0.5 grid: {'applied' if cv['rounding']['applied'] else 'not applied'} "
        f"(nested MCRMSE rounded {cv['rounding']['nested_rounded']:.4f}"
        f"{'' if cv['rounding']['tried'] else ', not tried'})\n\n",
        "## Models and blend\n\n", head,
        *[row(n, s) for n, s in cv["single"].items()], row(f"**blend: {cv['method']}** (nested)", b),
        f"\n![per-target RMSE]({images['per_target']})\n\n",
        "## Summary (for README)\n\n", summary_table(cv), "\n",
        "## Every method tried\n\n| method | features | nested | in-sample | chosen's gain over it (paired 95%) | seconds |\n"
        "|---|---|---|---|---|---|\n",
        *[f"| {m} | {r['features']} | {r['nested']['mcrmse']:.4f} | {r['in_sample']['mcrmse']:.4f} | "
          f"{_gain(r.get('gain_of_chosen')).strip(' ;()') or '-'} | {seconds.get(m, float('nan')):.1f} |\n"
          for m, r in sorted(cv["methods"].items(), key=lambda kv: kv[1]["nested"]["mcrmse"])],
        f"\n![methods]({images['methods']})\n\n",
    ]
    if "weights" in images:
        lines.append(f"## Blend weights\n\n![weights]({images['weights']})\n\n")
    if "scatter" in images:
        lines.append(f"## Predicted vs true (OOF)\n\n![scatter]({images['scatter']})\n")
    return "".join(lines)


def write_report(cv_path: Path | None = None, oof_path: Path | None = None, out: Path | None = None) -> Path:
    """reports/report.md + PNGs next to it, from metrics/cv.json and models/blend/oof.parquet -> path of the .md."""
    cv_path = Path(cv_path or paths.cv_metrics())
    oof_path = Path(oof_path or paths.blend_dir() / "oof.parquet")
    out = Path(out or paths.report())
    if not cv_path.is_file():
        raise StackError(f"{cv_path}: not found; run `stack blend` first")
    cv = json.loads(cv_path.read_text())
    missing = [k for k in ("blend", "single", "methods", "best_single") if k not in cv]
    if missing:
        raise StackError(f"{cv_path}: no {missing[0]!r} (written by an older `stack blend`); rerun `stack blend`")
    out.parent.mkdir(parents=True, exist_ok=True)
    images = {"per_target": "per_target_rmse.png", "methods": "methods.png"}
    plot_per_target(cv, out.parent / images["per_target"])
    plot_methods(cv, out.parent / images["methods"])
    if cv.get("weights"):
        images["weights"] = "weights.png"
        title = "Blend weights per target" if cv["method"] in ("hill", "nelder-mead") else "Weights of the prediction member"
        plot_weights(cv["weights"], out.parent / images["weights"], title)
    if oof_path.is_file():
        images["scatter"] = "oof_scatter.png"
        plot_scatter(pd.read_parquet(oof_path), out.parent / images["scatter"])
    blend_json = paths.blend_dir() / "blend.json"
    seconds = json.loads(blend_json.read_text()).get("seconds", {}) if blend_json.is_file() else {}
    atomic_write(out, lambda p: p.write_text(markdown(cv, images, seconds), encoding="utf-8"))
    return out
