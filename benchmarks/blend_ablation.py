"""What each member buys in the blend: nested CV of the default blend without it (drop-one), and of the base
members plus it (add-one), each with a paired bootstrap interval of the difference. Reads the caches only; writes
nothing. Run after `make run`.

    .venv/bin/python benchmarks/blend_ablation.py [--method ridge] [--base mpnet]
"""

from __future__ import annotations

import argparse

from stack.blend.config import blend_models, load_blend_config
from stack.blend.intervals import paired_bootstrap
from stack.blend.run import evaluate, load_frames, oof_of, options_from
from stack.config import load_params
from stack.metrics import get_metric, value
from stack.stages import load_context


def nested(method: str, members: list[str], train: dict, ctx, options):
    frames = {m: train[m] for m in members}
    return evaluate(method, "preds", frames, members, ctx.task, ctx.y, ctx.fold, options)["nested"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", default="ridge")
    ap.add_argument("--base", default="mpnet", help="the members add-one starts from (any with a cache)")
    args = ap.parse_args()
    params = load_params()
    cfg = load_blend_config(params)
    members, base = blend_models(params, cfg), args.base.split(",")
    ctx = load_context(params)
    train, _, _ = load_frames(ctx, list(dict.fromkeys([*members, *base])))
    options = options_from(cfg, params.source)
    task, y = ctx.task, ctx.y
    full = nested(args.method, members, train, ctx, options)
    plain = nested(args.method, base, train, ctx, options)
    print(f"{args.method} on all {len(members)} members: nested {task.metric.upper()} {value(task, y, full):.4f} "
          f"({get_metric(task.metric).better} is better); on {', '.join(base)}: {value(task, y, plain):.4f}\n")
    print("| member | its CV | blend without it | drop-one gain (paired 95%) | base + it | add-one gain (paired 95%) |")
    print("|---|---|---|---|---|---|")
    for m in members:
        own = value(task, y, oof_of(train[m], task))
        without = nested(args.method, [x for x in members if x != m], train, ctx, options)
        drop = paired_bootstrap(task, y, full, without)
        if m not in base:
            added = nested(args.method, [*base, m], train, ctx, options)
            g = paired_bootstrap(task, y, added, plain)
            add_cell = f"{value(task, y, added):.4f} | {g['gain']:+.4f} ({g['low']:+.4f} to {g['high']:+.4f})"
        else:
            add_cell = "- | -"
        print(f"| `{m}` | {own:.4f} | {value(task, y, without):.4f} | {drop['gain']:+.4f} ({drop['low']:+.4f} to "
              f"{drop['high']:+.4f}) | {add_cell} |", flush=True)


if __name__ == "__main__":
    main()
