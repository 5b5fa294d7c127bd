"""``kind: tfidf`` member: word and char n-gram TF-IDF with a ridge head, refit inside every fold.

The vectorisers are part of each fold's pipeline, so the vocabulary and IDF never see the held-out essays.
Written with the common cache schema: OOF/test predictions only (no ``emb_*`` columns).

    stack embed tfidf                                  # configs/models/tfidf.yaml
    stack embed tfidf --set char_ngrams=[3,5] --set head_alphas=[1,3,10]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stack.config import build, read_named
from stack.errors import StackError


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


def load_config(name: str, overrides: list[str] | None = None, kind_class=TfidfConfig) -> TfidfConfig:
    """``configs/models/<name>.yaml`` (``kind`` must match the class) + ``key=value`` overrides."""
    from stack import paths

    path = paths.model_config(name)
    cfg = build(kind_class, read_named(path, name, overrides, "model"), str(path))
    if cfg.kind != kind_class.kind:
        raise StackError(f"{path}: kind {cfg.kind!r} cannot be read as {kind_class.kind!r}")
    return cfg


def _ngram(value: tuple[int, ...], key: str, cfg) -> tuple[int, int] | None:
    if not value:
        return None
    if len(value) != 2 or not 1 <= value[0] <= value[1]:
        raise StackError(f"configs/models/{cfg.name}.yaml: {key} must be [min_n, max_n] with 1 <= min_n <= max_n, got {list(value)}")
    return value[0], value[1]


def make_head(cfg: TfidfConfig):
    """-> a factory of unfitted pipelines: texts ``(n,)`` -> TF-IDF ``(n, f)`` sparse -> RidgeCV ``(n, 6)``."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline, make_union

    if cfg.char_analyzer not in ("char", "char_wb"):
        raise StackError(f"configs/models/{cfg.name}.yaml: char_analyzer {cfg.char_analyzer!r} is not one of char, char_wb")
    word, char = _ngram(cfg.word_ngrams, "word_ngrams", cfg), _ngram(cfg.char_ngrams, "char_ngrams", cfg)
    if word is None and char is None:
        raise StackError(f"configs/models/{cfg.name}.yaml: word_ngrams and char_ngrams are both empty; set at least one")
    common = dict(min_df=cfg.min_df, max_features=cfg.max_features, sublinear_tf=cfg.sublinear_tf,
                  lowercase=cfg.lowercase, dtype=np.float32)

    def factory():
        parts = []
        if word is not None:
            parts.append(TfidfVectorizer(analyzer="word", ngram_range=word, token_pattern=r"(?u)\b\w+\b|[^\w\s]", **common))
        if char is not None:
            parts.append(TfidfVectorizer(analyzer=cfg.char_analyzer, ngram_range=char, **common))
        return make_pipeline(make_union(*parts), RidgeCV(alphas=np.asarray(cfg.head_alphas, float), alpha_per_target=True))

    return factory


def run_tfidf(name: str, params, overrides: list[str] | None = None) -> dict:
    """``stack embed NAME`` for ``kind: tfidf`` -> cache/<name>/ (predictions only). Returns the CV."""
    import time

    from stack.member import fit_and_write
    from stack.stages import load_context

    cfg = load_config(name, overrides, TfidfConfig)
    factory = make_head(cfg)
    ctx = load_context(params)
    t0 = time.perf_counter()
    X = np.asarray(ctx.train["full_text"].tolist(), dtype=object)
    X_test = np.asarray(ctx.test["full_text"].tolist(), dtype=object)
    result = fit_and_write(name, "tfidf", cfg, ctx, factory, X, X_test)
    return {**result, "seconds": time.perf_counter() - t0, "dtype": "-", "essays": len(X) + len(X_test)}
