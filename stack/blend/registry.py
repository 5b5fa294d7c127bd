"""Blenders by name: each entry is a factory returning an unfitted scikit-learn estimator ``(n, d) -> (n, 6)``.

    make = get_blender("ridge"); est = make().fit(X, y)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from stack.errors import StackError
from stack.oof import ridge_head

BLENDERS: dict[str, Callable] = {}
RIDGE_ALPHAS = np.logspace(-1, 5, 13)


def register(name: str):
    def wrap(factory):
        if name in BLENDERS:
            raise ValueError(f"blender {name!r} registered twice")
        BLENDERS[name] = factory
        return factory
    return wrap


def get_blender(name: str) -> Callable:
    if name not in BLENDERS:
        raise StackError(f"unknown blend method {name!r} (valid: {', '.join(sorted(BLENDERS))})")
    return BLENDERS[name]


register("ridge")(ridge_head(RIDGE_ALPHAS))
