"""``kind: tfidf``: word and char n-gram TF-IDF with a ridge head, refit inside every fold.

The vectorisers are part of each fold's head, so the vocabulary and IDF never see the held-out essays. Saved as
arrays: each vectoriser's vocabulary (in column order) and IDF (stack.heads.tfidf), and the ridge (no pickle).
Written with the common cache schema: OOF/test predictions only (no ``emb_*`` columns).

    stack fit tfidf                                  # configs/members/tfidf.yaml
    stack fit tfidf --set char_ngrams=[3,5] --set head_alphas=[1,3,10]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stack.errors import StackError
from stack.heads.ridge import Ridge
from stack.heads.tfidf import TfidfFeatures
from stack.members.featurized import FeaturizedKind
from stack.members.registry import register
from stack.state import savable


@dataclass(frozen=True)
class TfidfConfig:
    name: str = ""
    kind: str = "tfidf"
    word_ngrams: tuple[int, ...] = (1, 2)  # (min_n, max_n) of word n-grams; [] = no word features
    char_ngrams: tuple[int, ...] = (2, 5)  # (min_n, max_n) of character n-grams; [] = no char features
    char_analyzer: str = "char_wb"  # char_wb: n-grams inside word boundaries | char: across them
    min_df: int = 2
    max_features: int = 200000  # per vectoriser, most frequent first
    sublinear_tf: bool = True  # 1 + log(tf)
    lowercase: bool = True
    head_alphas: tuple[float, ...] = (0.3, 1.0, 3.0, 10.0, 30.0)


@savable
class TfidfRidge:
    """Texts ``(n,)`` -> TF-IDF of each vectoriser side by side (sparse) -> Ridge ``(n, 6)``."""

    def __init__(self, vectorizers: list[dict], alphas=(1.0,)):
        self.vectorizers, self.alphas = vectorizers, alphas  # each: analyzer, ngram_range, min_df, ...

    def fit(self, texts, y):
        self.tfidf_ = TfidfFeatures(self.vectorizers)
        self.ridge_ = Ridge(self.alphas, standardize=False).fit(self.tfidf_.fit_transform(texts), y)
        return self

    def predict(self, texts) -> np.ndarray:
        return self.ridge_.predict(self.tfidf_.transform(texts))

    @property
    def alpha_(self):
        return self.ridge_.alpha_

    def to_state(self) -> dict:
        return {"vectorizers": self.vectorizers, "alphas": list(self.alphas), "tfidf": self.tfidf_, "ridge": self.ridge_}

    @classmethod
    def from_state(cls, state: dict):
        obj = cls(state["vectorizers"], tuple(state["alphas"]))
        obj.tfidf_, obj.ridge_ = state["tfidf"], state["ridge"]
        return obj


def _ngram(value: tuple[int, ...], key: str, where: str) -> list[int] | None:
    if not value:
        return None
    if len(value) != 2 or not 1 <= value[0] <= value[1]:
        raise StackError(f"{where}: {key} must be [min_n, max_n] with 1 <= min_n <= max_n, got {list(value)}")
    return [value[0], value[1]]


def vectorizer_params(cfg, where: str) -> list[dict]:
    """The vectorisers ``cfg`` asks for (word, then char)."""
    if cfg.char_analyzer not in ("char", "char_wb"):
        raise StackError(f"{where}: char_analyzer {cfg.char_analyzer!r} is not one of char, char_wb")
    common = dict(min_df=cfg.min_df, max_features=cfg.max_features, sublinear_tf=cfg.sublinear_tf,
                  lowercase=cfg.lowercase)
    word, char = _ngram(cfg.word_ngrams, "word_ngrams", where), _ngram(cfg.char_ngrams, "char_ngrams", where)
    if word is None and char is None:
        raise StackError(f"{where}: word_ngrams and char_ngrams are both empty; set at least one")
    return ([{"analyzer": "word", "ngram_range": word, **common}] if word else []) + \
        ([{"analyzer": cfg.char_analyzer, "ngram_range": char, **common}] if char else [])


@register
class Tfidf(FeaturizedKind):
    name = "tfidf"
    config = TfidfConfig
    emb_in_cache = False

    def check(self, spec) -> None:
        vectorizer_params(spec.cfg, spec.where)

    def features(self, spec, texts, store):
        return np.asarray(texts, dtype=object), {"essays": len(texts)}

    def head(self, spec):
        params = vectorizer_params(spec.cfg, spec.where)
        return lambda: TfidfRidge(params, spec.cfg.head_alphas)
