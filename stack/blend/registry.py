"""Blenders by name. Each entry makes an unfitted scikit-learn estimator ``(n, d) -> (n, 6)`` and says which
features it reads: ``any`` (honours ``--features emb|preds|both``), ``preds`` (models' OOF predictions only)
or ``both`` (embeddings and predictions, split by the blender itself).

    entry = get_blender("hill")
    est = entry.make(layout, BlendConfig(negative=True)).fit(X, y)   # the blender knobs of params.yaml blend:
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from stack.blend.config import BlendConfig
from stack.blend.hill_climb import HillClimbBlender
from stack.blend.nelder_mead import NelderMeadBlender
from stack.blend.stacked import StackBlender
from stack.errors import StackError
from stack.heads.lgbm import LGBMBlender
from stack.heads.ridge import Ridge
from stack.heads.svr import KernelSVR

INPUTS = ("any", "preds", "both")


@dataclass(frozen=True)
class Entry:
    name: str
    inputs: str
    make: Callable  # (layout: features.Layout | None, options: BlendConfig) -> estimator
    doc: str


BLENDERS: dict[str, Entry] = {}


def register(name: str, inputs: str, doc: str):
    if inputs not in INPUTS:
        raise ValueError(f"inputs must be one of {INPUTS}, got {inputs!r}")

    def wrap(make):
        if name in BLENDERS:
            raise ValueError(f"blender {name!r} registered twice")
        BLENDERS[name] = Entry(name, inputs, make, doc)
        return make

    return wrap


def get_blender(name: str) -> Entry:
    if name not in BLENDERS:
        raise StackError(f"unknown blend method {name!r} (valid: {', '.join(sorted(BLENDERS))})")
    return BLENDERS[name]


def features_for(name: str, features: str) -> str:
    """The features a method really reads, given the ``--features`` asked for."""
    inputs = get_blender(name).inputs
    return features if inputs == "any" else inputs


@register("ridge", "any", "RidgeCV per target (alpha by leave-one-out) on standardised features")
def _ridge(layout=None, options=BlendConfig()):
    return Ridge()


@register("lgbm", "any", "LightGBM per target, early stopping on an inner split of the training rows")
def _lgbm(layout=None, options=BlendConfig()):
    return LGBMBlender(n_jobs=options.lgbm_n_jobs)


@register("svr", "any", "RBF SVR per target on standardised or L2-normalised features")
def _svr(layout=None, options=BlendConfig()):
    return KernelSVR(scaling=options.svr_scaling)


@register("hill", "preds", "greedy hill climbing over the models' OOF predictions, per target")
def _hill(layout=None, options=BlendConfig()):
    return HillClimbBlender(negative=options.negative)


@register("nelder-mead", "preds", "per-target weights of the models' predictions by Nelder-Mead")
def _nelder_mead(layout=None, options=BlendConfig()):
    return NelderMeadBlender(bounds=options.bounds)


@register("stack", "both", "mean of ridge on embeddings and hill climbing on predictions")
def _stack(layout=None, options=BlendConfig()):
    if layout is None:
        return StackBlender()
    emb = layout.emb_columns() if len(layout.emb_columns()) else layout.pred_columns()
    return StackBlender([("ridge-emb", Ridge(), emb.tolist()),
                         ("hill-preds", HillClimbBlender(negative=options.negative), layout.pred_columns().tolist())])
