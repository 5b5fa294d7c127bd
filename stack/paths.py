"""Every artifact path, as a function of (model, split): the only place filenames live.

Paths are relative to the working directory (the project root under DVC).
"""

import re
from pathlib import Path

from stack.errors import StackError

CACHE = Path("cache")
CONFIGS = Path("configs/models")
TRAIN_CONFIGS = Path("configs/train")
MODELS = Path("models")
METRICS = Path("metrics")
REPORTS = Path("reports")
SUBMISSION = Path("submission.csv")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def check_name(name: str) -> str:
    """Model names become folder names: letters, digits, ``_ . -`` only, so none escapes cache/ or configs/."""
    if not _NAME.fullmatch(name) or ".." in name:
        raise StackError(f"model name {name!r} is not allowed: use letters, digits, '_', '-' or '.' only")
    return name


def folds() -> Path:
    return CACHE / "folds.parquet"


def model_config(name: str) -> Path:
    return CONFIGS / f"{check_name(name)}.yaml"


def model_cache(name: str) -> Path:
    return CACHE / check_name(name)


def cache_file(name: str, split: str) -> Path:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return model_cache(name) / f"{split}.parquet"


def cv_metrics() -> Path:
    return METRICS / "cv.json"


def blend_dir() -> Path:
    return MODELS / "blend"


def train_config(name: str) -> Path:
    return TRAIN_CONFIGS / f"{check_name(name)}.yaml"


def fold_dir(name: str, fold: int) -> Path:
    """Fine-tuned weights (safetensors) and the resolved config of one fold."""
    return MODELS / check_name(name) / f"fold{fold}"


def model_dir(name: str) -> Path:
    """Saved stage-one heads/weights of a model (what `stack predict` needs besides the backbone)."""
    return MODELS / check_name(name)


def report() -> Path:
    return REPORTS / "report.md"
