"""Stage two: blend the cached stage-one members into one submission.

Never imports torch (tests/test_blend_run.py checks it in a subprocess). Modules, in data-flow order: ``config``
(params.yaml ``blend:``), ``weights`` (what weight blenders share), ``hill_climb``, ``nelder_mead``,
``stacked`` (mean of blenders), ``registry`` (by name; ridge, SVR and LightGBM come from stack.heads), ``features`` (cache
frames -> X), ``persist`` (save/load/apply a fitted blend, no pickle), ``run`` (``stack blend``).

    from stack.blend.registry import get_blender
    est = get_blender("hill").make().fit(oof_preds, y)      # (n, 6 * n_members) -> (n, 6)
"""
