"""Stage two: blend the cached stage-one models of several backbones into one submission.

Never imports torch (tests/test_blend_run.py checks it in a subprocess). Modules, in data-flow order:
``base`` (shared estimator plumbing), ``feature_blenders`` (ridge, svr, lgbm on embeddings and/or predictions),
``hill_climb``, ``nelder_mead``, ``stacked`` (mean of blenders), ``registry`` (by name), ``features``
(cache frames -> X), ``persist`` (save/load/apply a fitted blend), ``run`` (``stack blend``).

    from stack.blend.registry import get_blender
    est = get_blender("hill").make().fit(oof_preds, y)      # (n, 6 * n_models) -> (n, 6)
"""
