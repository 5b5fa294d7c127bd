"""Estimators shared by stage one (a member's per-fold head) and stage two (blenders): scikit-learn API, saved as
arrays + JSON (stack.state). Importing them imports no torch (the MLP head imports it to train, not to predict).

``base`` (validation, saving), ``ridge`` (exact leave-one-out ridge, dense or sparse), ``kernel_ridge`` (RBF, width
and alpha by leave-one-out), ``svr``, ``lgbm`` (a booster per target), ``mlp``, ``tfidf`` (n-gram vectorisers),
``crossfit`` (OOF on the fixed folds).
"""
