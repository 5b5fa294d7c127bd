"""``kind: lgbm``: LightGBM per target on the text statistics (stack.members.features) side by side with a
truncated SVD of word TF-IDF. The TF-IDF and the SVD are fitted inside each fold, on the training essays only;
each booster stops early on a random share of the training rows (stack.heads.lgbm.LGBMBlender). Saved as arrays
and LightGBM's own text format (no pickle).

    stack fit lgbm                     # configs/members/lgbm.yaml
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd

from stack.heads.lgbm import LGBMBlender
from stack.heads.tfidf import TfidfFeatures
from stack.members.features import FeaturesConfig, text_stats
from stack.members.featurized import FeaturizedKind
from stack.members.registry import register
from stack.state import savable

TEXT_COLUMN = "text"


@dataclass(frozen=True)
class LgbmConfig:
    name: str = ""
    kind: str = "lgbm"
    wordlist: str = FeaturesConfig.wordlist  # for the statistics' spelling and rarity columns
    word_ngrams: tuple[int, ...] = (1, 2)
    min_df: int = 2
    max_features: int = 50000
    svd: int = 64  # components of the TF-IDF's truncated SVD (0: the statistics alone)
    n_estimators: int = 1000
    learning_rate: float = 0.05
    num_leaves: int = 15
    colsample_bytree: float = 0.3
    subsample: float = 0.8
    valid_fraction: float = 0.15  # early stopping on this share of the training rows
    early_stopping_rounds: int = 50
    n_jobs: int = 2
    seed: int = 0

    RUN_KEYS: ClassVar[tuple] = ("n_jobs",)


@savable
class TextBoosting:
    """``DataFrame[text, statistics...]`` -> [statistics | SVD of word TF-IDF] -> one LightGBM booster per target."""

    def __init__(self, tfidf: list[dict], svd: int = 64, boost: dict | None = None, seed: int = 0):
        self.tfidf, self.svd, self.boost, self.seed = tfidf, svd, boost or {}, seed

    def _matrix(self, df: pd.DataFrame) -> np.ndarray:
        stats = df.drop(columns=TEXT_COLUMN).to_numpy(np.float64)
        if not self.svd:
            return stats
        return np.hstack([stats, np.asarray(self.tfidf_.transform(df[TEXT_COLUMN]) @ self.components_.T)])

    def fit(self, df: pd.DataFrame, y):
        from sklearn.decomposition import TruncatedSVD

        self.tfidf_ = TfidfFeatures(self.tfidf)
        if self.svd:
            A = self.tfidf_.fit_transform(df[TEXT_COLUMN])
            self.components_ = TruncatedSVD(self.svd, random_state=self.seed).fit(A).components_.astype(np.float32)
        self.boosters_ = LGBMBlender(random_state=self.seed, **self.boost).fit(self._matrix(df), y)
        return self

    def predict(self, df: pd.DataFrame) -> np.ndarray:
        return self.boosters_.predict(self._matrix(df))

    def to_state(self) -> dict:
        state = {"tfidf": self.tfidf, "svd": self.svd, "boost": self.boost, "seed": self.seed, "boosters": self.boosters_}
        return {**state, "fitted_tfidf": self.tfidf_, "components": self.components_} if self.svd else state

    @classmethod
    def from_state(cls, state: dict):
        obj = cls(state["tfidf"], state["svd"], state["boost"], state["seed"])
        obj.boosters_ = state["boosters"]
        if obj.svd:
            obj.tfidf_, obj.components_ = state["fitted_tfidf"], state["components"]
        return obj


@register
class Lgbm(FeaturizedKind):
    name = "lgbm"
    config = LgbmConfig
    emb_in_cache = False

    def features(self, spec, texts, store):
        stats = pd.DataFrame(text_stats(texts, spec.cfg.wordlist))
        stats.columns = [f"s{i}" for i in range(stats.shape[1])]
        return pd.concat([pd.DataFrame({TEXT_COLUMN: list(texts)}), stats], axis=1), {"essays": len(texts)}

    def head(self, spec):
        c = spec.cfg
        tfidf = [{"analyzer": "word", "ngram_range": list(c.word_ngrams), "min_df": c.min_df,
                  "max_features": c.max_features, "sublinear_tf": True, "lowercase": True}]
        boost = {"n_estimators": c.n_estimators, "learning_rate": c.learning_rate, "num_leaves": c.num_leaves,
                 "colsample_bytree": c.colsample_bytree, "subsample": c.subsample,
                 "valid_fraction": c.valid_fraction, "early_stopping_rounds": c.early_stopping_rounds, "n_jobs": c.n_jobs}
        return lambda: TextBoosting(tfidf, c.svd, boost, c.seed)
