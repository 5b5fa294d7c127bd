"""``kind: tfidf``: word and char n-gram TF-IDF with a ridge head, refit inside every fold.

The vectorisers are part of each fold's head, so the vocabulary and IDF never see the held-out essays. Saved as
arrays: each vectoriser's vocabulary (in column order) and IDF, and the ridge (stack.state: no pickle).
Written with the common cache schema: OOF/test predictions only (no ``emb_*`` columns).

    stack fit tfidf                                  # configs/members/tfidf.yaml
    stack fit tfidf --set char_ngrams=[3,5] --set head_alphas=[1,3,10]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from stack.errors import StackError
from stack.heads.ridge import Ridge
from stack.members.featurized import FeaturizedKind
from stack.members.registry import register
from stack.state import pack_strings, savable, unpack_strings

WORD_PATTERN = r"(?u)\b\w+\b|[^\w\s]"


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


def _vectorizer(params: dict, vocabulary=None):
    from sklearn.feature_extraction.text import TfidfVectorizer

    ngram = tuple(params["ngram_range"])
    extra = {"token_pattern": WORD_PATTERN} if params["analyzer"] == "word" else {}
    return TfidfVectorizer(analyzer=params["analyzer"], ngram_range=ngram, min_df=params["min_df"],
                           max_features=params["max_features"], sublinear_tf=params["sublinear_tf"],
                           lowercase=params["lowercase"], dtype=np.float32, vocabulary=vocabulary, **extra)


@savable
class TfidfRidge:
    """Texts ``(n,)`` -> TF-IDF of each vectoriser side by side (sparse) -> Ridge ``(n, 6)``."""

    def __init__(self, vectorizers: list[dict], alphas=(1.0,)):
        self.vectorizers, self.alphas = vectorizers, alphas  # each: analyzer, ngram_range, min_df, ...

    def _transform(self, texts):
        return sp.hstack([v.transform(list(texts)) for v in self.fitted_]).tocsr()

    def fit(self, texts, y):
        self.fitted_ = [_vectorizer(p) for p in self.vectorizers]
        X = sp.hstack([v.fit_transform(list(texts)) for v in self.fitted_]).tocsr()
        self.ridge_ = Ridge(self.alphas, standardize=False).fit(X, y)
        return self

    def predict(self, texts) -> np.ndarray:
        return self.ridge_.predict(self._transform(texts))

    @property
    def alpha_(self):
        return self.ridge_.alpha_

    def to_state(self) -> dict:
        vocab = [pack_strings(sorted(v.vocabulary_, key=v.vocabulary_.get)) for v in self.fitted_]
        return {"vectorizers": self.vectorizers, "alphas": list(self.alphas), "ridge": self.ridge_,
                "vocabulary": vocab, "idf": [v.idf_.astype(np.float64) for v in self.fitted_]}

    @classmethod
    def from_state(cls, state: dict):
        obj = cls(state["vectorizers"], tuple(state["alphas"]))
        obj.fitted_ = []
        for params, vocab, idf in zip(state["vectorizers"], state["vocabulary"], state["idf"]):
            terms = unpack_strings(vocab)
            v = _vectorizer(params, {t: i for i, t in enumerate(terms)})
            v.idf_ = idf
            obj.fitted_.append(v)
        obj.ridge_ = state["ridge"]
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
