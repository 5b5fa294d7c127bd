"""stack: score essays on the task's traits (FB3's six analytic traits by default), stage one + stage two.

    make run                                    # folds -> fit@<member> -> blend -> submission.csv
    from stack import Scorer
    Scorer.load("bundle/").score(["An essay ..."])
"""

__version__ = "0.2.0"


def __getattr__(name: str):
    """``stack.Scorer``, imported on first use: ``import stack`` stays cheap and pulls no stage's code."""
    if name == "Scorer":
        import importlib

        return importlib.import_module("stack.scorer").Scorer
    raise AttributeError(f"module 'stack' has no attribute {name!r}")
