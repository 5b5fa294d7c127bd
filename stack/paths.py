"""Every artifact path, as a function of (member, split): the one place filenames live.

Paths are relative to the working directory (the project root under DVC).

    cache/folds.parquet                         folds
    cache/<member>/{train,test}.parquet         OOF / test predictions (+ embeddings), config.json
    cache/<member>/embeddings/<key>/            frozen members' embeddings by essay content (not a DVC output)
    models/<member>/                            what scoring new essays needs: member.json, heads or fold weights
    models/blend/                               the fitted blend
"""

import re
from pathlib import Path

from stack.errors import StackError

CACHE = Path("cache")
MEMBER_CONFIGS = Path("configs/members")
BACKBONE_CONFIGS = Path("configs/backbones")
MODELS = Path("models")
METRICS = Path("metrics")
REPORTS = Path("reports")
SUBMISSION = Path("submission.csv")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def check_name(name: str) -> str:
    """Names become folder names: letters, digits, ``_ . -`` only, so none escapes cache/ or configs/."""
    if not _NAME.fullmatch(name) or ".." in name:
        raise StackError(f"name {name!r} is not allowed: use letters, digits, '_', '-' or '.' only")
    return name


def folds() -> Path:
    return CACHE / "folds.parquet"


def member_config(name: str) -> Path:
    return MEMBER_CONFIGS / f"{check_name(name)}.yaml"


def backbone_config(name: str) -> Path:
    return BACKBONE_CONFIGS / f"{check_name(name)}.yaml"


def member_cache(name: str) -> Path:
    return CACHE / check_name(name)


def cache_file(name: str, split: str) -> Path:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return member_cache(name) / f"{split}.parquet"


def embedding_store(name: str) -> Path:
    return member_cache(name) / "embeddings"


def member_dir(name: str) -> Path:
    """What scoring new essays with a member needs besides its backbone: member.json, heads or fold weights."""
    return MODELS / check_name(name)


def live_dir(name: str) -> Path:
    """DVCLive folder of a fine-tuning run: ``metrics.json`` and ``plots/metrics/fold<k>/`` (kept with the folds)."""
    return member_dir(name) / "live"


def member_metrics(name: str) -> Path:
    """A member's CV as DVC metrics (``dvc metrics show``)."""
    return METRICS / "members" / f"{check_name(name)}.json"


def cv_metrics() -> Path:
    return METRICS / "cv.json"


def blend_dir() -> Path:
    return MODELS / "blend"


def report() -> Path:
    return REPORTS / "report.md"
