"""Estimators shared by stage one (a member's per-fold head) and stage two (blenders): scikit-learn API, saved as
arrays + JSON (stack.state). Never imports torch.

``base`` (validation, saving), ``ridge`` (exact leave-one-out ridge, dense or sparse), ``crossfit`` (OOF on the
fixed folds).
"""
