"""Stage two's keys (params.yaml ``blend:``), owned here so that editing them reruns only ``blend`` and ``report``.

    from stack.blend.config import load_blend_config
    cfg = load_blend_config(params)        # params: stack.config.Params
"""

from __future__ import annotations

from dataclasses import dataclass

from stack.config import build


@dataclass(frozen=True)
class BlendConfig:
    models: tuple[str, ...] = ()  # members to blend; [] = every member in params.yaml `members` and `heads`
    method: str = "ridge"  # the blend written to submission.csv
    features: str = "preds"  # emb | preds (both only for method stack: one blender must not see both)
    compare: tuple[str, ...] = ("ridge", "hill", "nelder-mead", "stack")  # also scored, for metrics/cv.json
    negative: bool = False  # hill / nelder-mead may give a member a negative weight
    bounds: tuple[float, ...] | None = None  # nelder-mead weight bounds [low, high]
    svr_scaling: str = "standard"  # standard | l2
    # also try each target's grid (rounding, and thresholds fitted on OOF predictions); a mapping is applied only if
    # nested CV improves. Always on for metric qwk, which scores grid values (rounding vs thresholds)
    round: bool = False
    interval: float = 0.9  # per-essay intervals: their nested coverage at this level goes to cv.json (0 = none)
    lgbm_n_jobs: int = 2
    bootstrap: int = 1000  # resamples for the 95% intervals in metrics/cv.json (0 = none)


def load_blend_config(params) -> BlendConfig:
    return build(BlendConfig, params.blend or {}, f"{params.source}: blend")


def blend_models(params, cfg: BlendConfig | None = None) -> list[str]:
    """The members ``stack blend`` uses by default: ``blend.models``, else every member."""
    cfg = cfg or load_blend_config(params)
    return list(cfg.models or params.all_members())
