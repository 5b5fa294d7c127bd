"""The ``stack`` command: one thin verb per stage. Errors a person can fix print one line and exit 2; stack's own
warnings print one line too.

    stack folds                         # cache/folds.parquet
    stack fit mpnet                     # any member (configs/members/mpnet.yaml) -> cache/mpnet/, models/mpnet/
    stack blend --models base,large     # submission.csv, metrics/cv.json, models/blend/
    stack predict --input essays.csv --out scores.csv
    stack score submission.csv labels.csv
"""

from __future__ import annotations

import functools
import sys
import warnings
from pathlib import Path

import typer

from stack.errors import StackError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)
PARAMS_OPT = typer.Option(Path("params.yaml"), "--params", help="params.yaml to read")


@app.callback()
def main() -> None:
    """Score essays on the task's targets (params.yaml task:, FB3 by default): folds -> fit (each member) -> blend."""
    warnings.formatwarning = one_line


def one_line(message, category, filename, lineno, line=None) -> str:
    """stack's own warnings as one line, as its errors are; other packages' keep Python's format."""
    if Path(filename).resolve().is_relative_to(Path(__file__).resolve().parent):
        return f"warning: {message}\n"
    return _PYTHON_FORMAT(message, category, filename, lineno, line)


_PYTHON_FORMAT = warnings.formatwarning


def friendly(fn):
    """Turn StackError into one line on stderr and exit code 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except StackError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("interrupted: finished outputs are kept; run the same command again to continue", err=True)
            raise typer.Exit(130) from None

    return wrapper


def _models(value: str | None, default) -> list[str]:
    return [m.strip() for m in value.split(",") if m.strip()] if value else list(default)


def _line(name: str, cv: dict) -> str:
    """One member's or blend's CV: the metric (the first key of ``cv``), then each target's value."""
    metric = next(iter(cv))
    return f"{name:<12} {metric.upper()} {cv[metric]:.4f}  " + "  ".join(f"{t[:5]} {v:.4f}"
                                                                          for t, v in cv["per_target"].items())


@app.command()
@friendly
def folds(params: Path = PARAMS_OPT) -> None:
    """Folds stratified over the task's targets (or grouped: folds.group) -> cache/folds.parquet."""
    from stack.config import load_params
    from stack.stages import run_folds

    f = run_folds(load_params(params))
    typer.echo(f"wrote cache/folds.parquet: {len(f)} essays in {f['fold'].nunique()} folds")


@app.command()
@friendly
def fit(
    member: str = typer.Argument(..., help="a name under configs/members/"),
    set_: list[str] = typer.Option(None, "--set", help="override a key, e.g. --set batch_size=16 --set backbone.path=DIR"),
    params: Path = PARAMS_OPT,
) -> None:
    """Fit one stage-one member on the folds -> cache/<member>/, models/<member>/ (resumes what is finished)."""
    from stack.config import load_params
    from stack.members import fit_member
    from stack.runtime import is_main

    r = fit_member(member, load_params(params), set_)
    if not is_main():
        return
    for k, f in sorted(r.get("folds", {}).items()):
        typer.echo(f"fold {k}: MCRMSE {f['mcrmse']:.4f}" + ("  (finished earlier: skipped)" if f["skipped"] else ""))
    if "embedded" in r:
        rss = f", peak RSS {r['peak_rss_mb'] / 1024:.1f} GiB" if r.get("peak_rss_mb") else ""
        typer.echo(f"embedded {r['embedded']} new essays, reused {r['reused']} ({r['precision']}{rss})")
    if r["pending"]:
        typer.echo(f"folds {', '.join(map(str, r['pending']))} not fitted yet; the cache is written once every fold is done")
        return
    typer.echo(_line(member, r["cv"]))
    typer.echo(f"wrote cache/{member}/, models/{member}/ in {r['seconds'] / 60:.1f} min")


def _renamed(verb: str, name: str) -> None:
    from stack.renamed import verb_hint

    raise StackError(verb_hint(verb, name))


@app.command(hidden=True, context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@friendly
def embed(name: str = typer.Argument("<member>")) -> None:
    """Renamed: stack fit."""
    _renamed("embed", name)


@app.command(hidden=True, context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@friendly
def train(name: str = typer.Argument("<member>")) -> None:
    """Renamed: stack fit."""
    _renamed("train", name)


@app.command()
@friendly
def blend(
    models: str = typer.Option(None, "--models", help="comma-separated members (default: blend.models, else every member)"),
    method: str = typer.Option(None, "--method", help="blender name (default: params.yaml blend.method)"),
    features: str = typer.Option(None, "--features", help="emb | preds | both (both: method stack only)"),
    compare: str = typer.Option(None, "--compare", help="other methods to score, comma-separated ('' for none)"),
    round_: bool = typer.Option(None, "--round/--no-round", help="try rounding to the 0.5 grid (kept only if CV improves)"),
    params: Path = PARAMS_OPT,
) -> None:
    """Stage two on the cached models -> submission.csv, metrics/cv.json, models/blend/."""
    from stack.blend.config import blend_models, load_blend_config
    from stack.blend.run import run_blend
    from stack.config import load_params

    p = load_params(params)
    cfg = load_blend_config(p)
    r = run_blend(p, _models(models, blend_models(p, cfg)), method or cfg.method, features or cfg.features,
                  compare=None if compare is None else _models(compare, []), try_rounding=round_)
    from stack.metrics import get_metric

    metric = get_metric(r.get("metric", {}).get("name", "mcrmse"))
    m = metric.name
    for name in metric.order({n: s[m] for n, s in r["single"].items()}):
        typer.echo(_line(name, {m: r["single"][name][m], "per_target": r["single"][name]["per_target"]}))
    for name, s in r["methods"].items():
        typer.echo(f"method {name:<12} ({s['features']}): nested {s['nested'][m]:.4f}  in-sample {s['in_sample'][m]:.4f}")
    typer.echo(_line(f"blend:{r['method']}", {m: r["blend"][m], "per_target": r["blend"]["per_target"]})
               + f"  (nested CV; {metric.better} is better)")
    typer.echo("wrote submission.csv, metrics/cv.json, models/blend/")


@app.command()
@friendly
def report(out: Path = typer.Option(None, "--out", help="default reports/report.md")) -> None:
    """reports/report.md with PNG plots from metrics/cv.json and the saved blend's OOF predictions."""
    from stack.report import write_report

    typer.echo(f"wrote {write_report(out=out)}")


@app.command()
@friendly
def predict(
    input_csv: Path = typer.Option(..., "--input", help="CSV with the task's id and text columns (others ignored)"),
    out: Path = typer.Option(Path("scores.csv"), "--out", help="where to write the id + one score per target"),
    models: str = typer.Option(None, "--models", help="comma-separated members (default: those the saved blend uses)"),
    bundle: Path = typer.Option(None, "--bundle", help="a folder written by `stack export` (no repository needed)"),
    interval: float = typer.Option(None, "--interval", help="also <target>_lo, <target>_hi at this coverage, e.g. 0.9"),
) -> None:
    """Score new essays with the saved members and the saved blend (or a bundle) -> OUT."""
    from stack.predict import run_predict

    scores = run_predict(input_csv, out, _models(models, []), bundle, interval)
    typer.echo(f"wrote {out}: {len(scores)} essays scored")


@app.command()
@friendly
def export(
    out: Path = typer.Argument(..., help="a new folder for the bundle"),
    keep_folds: bool = typer.Option(False, "--keep-folds", help="keep every fold head and fine-tuned fold outputs"),
    drop_zero: bool = typer.Option(False, "--drop-zero", help="leave out members the blend weights at zero"),
    by_reference: bool = typer.Option(False, "--packaged-by-reference",
                                      help="reference packaged backbones (pip packages) instead of copying weights"),
) -> None:
    """Write a self-contained bundle of the saved blend and its members -> OUT (score with --bundle / Scorer.load)."""
    from stack.bundle import export_bundle

    manifest = export_bundle(out, keep_folds, drop_zero, by_reference)
    size = sum(f["bytes"] for f in manifest["files"].values())
    typer.echo(f"wrote {out}: {len(manifest['files'])} files, {size / 2**20:.1f} MiB, members "
               f"{', '.join(manifest['members'])}")


@app.command()
@friendly
def score(pred: Path = typer.Argument(..., help="predictions CSV"), labels: Path = typer.Argument(..., help="labels CSV"),
          params: Path = PARAMS_OPT) -> None:
    """The task's metric, overall and per target, of PRED.csv against LABELS.csv (joined on the task's id)."""
    from stack.config import load_params
    from stack.data import read_scores
    from stack.metrics import score as metric_score
    from stack.task import load_task

    task = load_task(load_params(params))
    p, y = read_scores(pred, labels=False, task=task), read_scores(labels, labels=True, task=task)
    missing = sorted(set(y[task.id]) - set(p[task.id]))
    if missing:
        raise StackError(f"{pred}: no prediction for {task.id} {missing[0]!r} ({len(missing)} of {len(y)} missing)")
    p = p.set_index(task.id).loc[y[task.id]]
    cv = metric_score(task, task.y(y), task.y(p))
    typer.echo(f"{task.metric.upper()} {cv[task.metric]:.4f}")
    for t, v in cv["per_target"].items():
        typer.echo(f"  {t:<12} {v:.4f}")
    if "rmse" in cv:
        typer.echo(f"RMSE {cv['rmse']:.4f}")


@app.command()
@friendly
def serve(
    bundle: Path = typer.Option(None, "--bundle", help="a folder written by `stack export` (default: this project's)"),
    host: str = typer.Option("127.0.0.1", "--host", help="127.0.0.1: this machine only (see README for a network)"),
    port: int = typer.Option(8000, "--port"),
    max_mb: float = typer.Option(5.0, "--max-mb", help="largest request body, in MiB"),
    max_essays: int = typer.Option(200, "--max-essays", help="most essays in one request"),
) -> None:
    """Serve the saved stack (or a bundle): a page at / and an HTTP API (POST /score, /score/csv; docs at /docs)."""
    from stack.serve import run_server

    run_server(bundle, host, port, max_mb, max_essays)


@app.command()
@friendly
def audit(
    pred: Path = typer.Argument(..., help="machine scores: CSV with the task's id and targets"),
    labels: Path = typer.Argument(..., help="human scores: the same columns (+ the --by columns)"),
    by: str = typer.Option(None, "--by", help="comma-separated group columns (in LABELS or PRED), e.g. gender,grade"),
    out: Path = typer.Option(Path("reports/audit"), "--out", help="folder for audit.md, audit.json, dsm.png"),
    min_n: int = typer.Option(30, "--min-n", help="groups smaller than this are shown but not flagged"),
    bundle: Path = typer.Option(None, "--bundle", help="take the task from a bundle instead of params.yaml"),
    params: Path = PARAMS_OPT,
) -> None:
    """Agreement (QWK, r, SMD, exact/adjacent) of PRED with human LABELS, and fairness (DSM) across groups."""
    from stack.audit import audit as run_audit
    from stack.audit import write_audit
    from stack.data import read_scores

    task = _task(params, bundle)
    groups = _models(by, [])
    y = read_scores(labels, labels=True, task=task, extra=groups)
    p = read_scores(pred, labels=False, task=task, extra=groups)
    for col in groups:
        if col not in y.columns and col not in p.columns:
            raise StackError(f"--by column {col!r} is in neither {labels} nor {pred}; name a column of either")
    y = y.merge(p[[task.id, *[c for c in groups if c not in y.columns]]], on=task.id, how="left")
    result = run_audit(task, y, p[[task.id, *task.targets]], groups, min_n)
    written = write_audit(result, task, out)
    flagged = sum(bool(r["flags"]) for r in result["targets"].values()) + sum(
        bool(r["flags"]) for g in result["by"].values() for per in g.values() for r in per.values())
    typer.echo(f"wrote {written[-1]}, {', '.join(p.name for p in written[:-1])}: {flagged} flagged rows")


def _task(params: Path, bundle: Path | None):
    """The task of a bundle (its manifest), else of params.yaml."""
    from stack.task import from_record, load_task

    if bundle is not None:
        from stack.bundle import MANIFEST
        from stack.cache import read_json

        manifest = read_json(Path(bundle) / MANIFEST, f"{bundle} is not a bundle written by `stack export`")
        return from_record(manifest.get("task"), str(Path(bundle) / MANIFEST))
    from stack.config import load_params

    return load_task(load_params(params))


if __name__ == "__main__":
    sys.exit(app())
