"""Agreement with human scores and fairness across groups of students, as ETS's criteria for automated scoring
(Williamson, Xi & Breyer, 2012) and its RSMTool report them; the formulas are small, so they are computed here
(RSMTool itself pins numpy<2 and an old scikit-learn).

Per target: QWK on the grid, Pearson r, RMSE, SMD = (mean machine - mean human) / sd human (ddof 1), exact and
adjacent agreement (on the grid), and the two score distributions. Per subgroup of each ``by`` column: n, the same
metrics and DSM = mean(z_machine - z_human) with z taken over the whole set, with a bootstrap 95% interval. Flags
where RSMTool's reports draw their lines: |SMD| > 0.15, |DSM| > 0.10, QWK or r < 0.70; a group smaller than
``min_n`` is reported but never flagged.

    result = audit(task, labels, preds, by=["gender"])       # frames: the task's id + targets (+ the by columns)
    write_audit(result, task, Path("reports/audit"))          # audit.md, audit.json, dsm.png
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from stack.cache import atomic_write
from stack.errors import StackError
from stack.metrics import qwk

SMD_LINE, DSM_LINE, AGREEMENT_LINE = 0.15, 0.10, 0.70
MIN_N = 30


def _sd(x: np.ndarray) -> float:
    return float(np.std(x, ddof=1)) if len(x) > 1 else float("nan")


def agreement(h: np.ndarray, m: np.ndarray, scale) -> dict:
    """The per-target metrics of human ``h`` and machine ``m`` scores ``(n,)`` on ``scale``."""
    r = float(np.corrcoef(h, m)[0, 1]) if len(h) > 1 and np.std(h) > 0 and np.std(m) > 0 else float("nan")
    sd_h = _sd(h)
    out = {"n": int(len(h)), "mean_human": float(np.mean(h)), "mean_machine": float(np.mean(m)), "sd_human": sd_h,
           "sd_machine": _sd(m), "r": r, "rmse": float(np.sqrt(np.mean((h - m) ** 2))),
           "smd": float((np.mean(m) - np.mean(h)) / sd_h) if sd_h > 0 else float("nan")}
    if scale.step is not None:
        steps = np.abs(scale.round(m) - scale.round(h)) / scale.step
        out.update(qwk=qwk(h, m, scale), exact=float(np.mean(steps < 0.5)), adjacent=float(np.mean(steps < 1.5)))
    else:
        out.update(qwk=None, exact=None, adjacent=None)
    return out


def _flags(row: dict, dsm: bool) -> list[str]:
    flags = []
    if abs(row["smd"]) > SMD_LINE:
        flags.append(f"|SMD| > {SMD_LINE}")
    if dsm and abs(row["dsm"]) > DSM_LINE:
        flags.append(f"|DSM| > {DSM_LINE}")
    if row["qwk"] is not None and row["qwk"] < AGREEMENT_LINE:
        flags.append(f"QWK < {AGREEMENT_LINE}")
    if not np.isnan(row["r"]) and row["r"] < AGREEMENT_LINE:
        flags.append(f"r < {AGREEMENT_LINE}")
    return flags


def _dsm(zh: np.ndarray, zm: np.ndarray, n_boot: int, rng) -> tuple[float, list[float]]:
    """mean(z_machine - z_human) of one group, and its bootstrap 95% interval (resampling the group's essays)."""
    diff = zm - zh
    if n_boot and len(diff) > 1:
        means = diff[rng.integers(0, len(diff), (n_boot, len(diff)))].mean(axis=1)
        ci = [float(v) for v in np.quantile(means, [0.025, 0.975])]
    else:
        ci = [float("nan"), float("nan")]
    return float(diff.mean()), ci


def distribution(h: np.ndarray, m: np.ndarray, scale) -> dict:
    """The share of essays on each grid level (machine scores rounded to the grid), human beside machine."""
    levels = scale.levels
    hs, ms = scale.round(h), scale.round(m)
    return {"levels": levels.tolist(), "human": [float(np.mean(np.isclose(hs, v))) for v in levels],
            "machine": [float(np.mean(np.isclose(ms, v))) for v in levels]}


def audit(task, labels: pd.DataFrame, preds: pd.DataFrame, by: list[str] = (), min_n: int = MIN_N,
          n_boot: int = 1000, seed: int = 0) -> dict:
    """``labels``: the task's id, targets and the ``by`` columns; ``preds``: id and targets, joined on the id
    (every labelled essay needs a prediction). -> the audit as a JSON-able dict."""
    missing = sorted(set(labels[task.id]) - set(preds[task.id]))
    if missing:
        raise StackError(f"no prediction for {task.id} {missing[0]!r} ({len(missing)} of {len(labels)} labelled essays "
                         "missing); the two files must describe the same essays")
    joined = labels.merge(preds, on=task.id, suffixes=("", "_machine"), validate="one_to_one")
    rng = np.random.default_rng(seed)
    result = {"n": int(len(joined)), "min_n": min_n, "lines": {"smd": SMD_LINE, "dsm": DSM_LINE,
                                                               "qwk_r": AGREEMENT_LINE},
              "targets": {}, "by": {}}
    z = {}
    for t, scale in zip(task.targets, task.scales):
        h, m = joined[t].to_numpy(float), joined[f"{t}_machine"].to_numpy(float)
        row = agreement(h, m, scale)
        row["flags"] = _flags(row, dsm=False)
        if scale.step is not None:
            row["distribution"] = distribution(h, m, scale)
        result["targets"][t] = row
        z[t] = ((h - h.mean()) / _sd(h), (m - m.mean()) / _sd(m))
    for col in by:
        groups = {}
        for value, rows in joined.groupby(col, sort=True, dropna=False):
            idx = joined.index.get_indexer(rows.index)
            per = {}
            for t, scale in zip(task.targets, task.scales):
                row = agreement(rows[t].to_numpy(float), rows[f"{t}_machine"].to_numpy(float), scale)
                row["dsm"], row["dsm_ci95"] = _dsm(z[t][0][idx], z[t][1][idx], n_boot, rng)
                row["small"] = len(rows) < min_n
                row["flags"] = [] if row["small"] else _flags(row, dsm=True)
                per[t] = row
            groups[str(value)] = per
        result["by"][col] = groups
    return result


def _f(x, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{digits}f}"


def markdown(result: dict, task) -> str:
    """The audit as markdown: one table of agreement per target, one table per ``by`` column."""
    lines = [f"# Agreement and fairness audit\n\n{result['n']} essays with human scores. Flagged where RSMTool's "
             f"reports draw their lines: |SMD| > {SMD_LINE}, |DSM| > {DSM_LINE}, QWK or r < {AGREEMENT_LINE}; groups "
             f"under {result['min_n']} essays are shown but not flagged.\n\n## Agreement\n\n",
             "| target | QWK | r | RMSE | SMD | exact | adjacent | mean human / machine | flags |\n",
             "|---|---|---|---|---|---|---|---|---|\n"]
    for t, r in result["targets"].items():
        lines.append(f"| {t} | {_f(r['qwk'])} | {_f(r['r'])} | {_f(r['rmse'])} | {_f(r['smd'])} | {_f(r['exact'])} | "
                     f"{_f(r['adjacent'])} | {_f(r['mean_human'], 2)} / {_f(r['mean_machine'], 2)} | "
                     f"{', '.join(r['flags']) or '-'} |\n")
    for t, r in result["targets"].items():
        if "distribution" in r:
            d = r["distribution"]
            lines.append(f"\n{t}, share of essays per level (human / machine): " + ", ".join(
                f"{lv:g}: {a:.0%} / {b:.0%}" for lv, a, b in zip(d["levels"], d["human"], d["machine"])) + "\n")
    for col, groups in result["by"].items():
        lines += [f"\n## By {col}\n\n", "| group | target | n | QWK | r | RMSE | SMD | DSM (95% interval) | flags |\n",
                  "|---|---|---|---|---|---|---|---|---|\n"]
        for g, per in groups.items():
            for t, r in per.items():
                flags = "too few to flag" if r["small"] else ", ".join(r["flags"]) or "-"
                lines.append(f"| {g} | {t} | {r['n']} | {_f(r['qwk'])} | {_f(r['r'])} | {_f(r['rmse'])} | "
                             f"{_f(r['smd'])} | {_f(r['dsm'])} ({_f(r['dsm_ci95'][0])} to {_f(r['dsm_ci95'][1])}) | "
                             f"{flags} |\n")
    return "".join(lines)


def plot_dsm(result: dict, out: Path) -> None:
    """DSM of every group with its bootstrap interval, one panel per ``by`` column, the ±0.10 lines drawn."""
    from stack.report import _plt, _save

    plt = _plt()
    cols = list(result["by"])
    fig, axes = plt.subplots(len(cols), 1, figsize=(8, 1.2 + 0.45 * max(len(g) * len(next(iter(g.values())))
                                                                         for g in result["by"].values())
                                                      * len(cols)), squeeze=False)
    for ax, col in zip(axes[:, 0], cols):
        labels, mids, los, his, colors = [], [], [], [], []
        for g, per in result["by"][col].items():
            for t, r in per.items():
                labels.append(f"{g} · {t}")
                mids.append(r["dsm"])
                los.append(r["dsm"] - r["dsm_ci95"][0])
                his.append(r["dsm_ci95"][1] - r["dsm"])
                colors.append("grey" if r["small"] else "crimson" if abs(r["dsm"]) > DSM_LINE else "black")
        y = np.arange(len(labels))
        for i in range(len(labels)):
            ax.errorbar(mids[i], y[i], xerr=[[los[i]], [his[i]]], fmt="o", color=colors[i], capsize=3)
        for line in (-DSM_LINE, DSM_LINE):
            ax.axvline(line, color="crimson", ls="--", lw=1)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks(y, labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(f"DSM by {col} (machine z - human z; grey: too few essays to flag)", fontsize=10)
    axes[-1, 0].set_xlabel("DSM with its bootstrap 95% interval")
    _save(fig, out)


def write_audit(result: dict, task, out: Path) -> list[Path]:
    """``out``/audit.md, audit.json and (with ``by`` columns) dsm.png; each written atomically."""
    out = Path(out)
    written = [atomic_write(out / "audit.json", lambda p: p.write_text(json.dumps(result, indent=2) + "\n"))]
    if result["by"]:
        plot_dsm(result, out / "dsm.png")
        written.append(out / "dsm.png")
    md = markdown(result, task) + ("\n![DSM by group](dsm.png)\n" if result["by"] else "")
    written.append(atomic_write(out / "audit.md", lambda p: p.write_text(md, encoding="utf-8")))
    return written
