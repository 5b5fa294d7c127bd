"""``kind: features``: handcrafted text statistics with a standardised ridge head.

Length, sentence and word length, lexical variety, punctuation, capitalisation and spacing habits, word
rarity and a spelling-error rate (the share of words missing from the English word-frequency list that
the ``pyspellchecker`` package ships, ``spellchecker/resources/en.json.gz``), then the capitalisation, paragraph and
run-on statistics of stack.members.style. The statistics are written as the ``emb_*`` columns (stage two and
the ``lgbm`` kind may use them), next to the OOF/test predictions.

    stack fit features
    from stack.members.features import text_stats, FEATURES
    X = text_stats(["I like dogs. they is nice"])       # (1, len(FEATURES)) float64
"""

from __future__ import annotations

import gzip
import json
import math
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from stack.errors import StackError
from stack.members.featurized import FeaturizedKind
from stack.members.registry import register
from stack.members.style import STYLE, WORD, style_stats


@dataclass(frozen=True)
class FeaturesConfig:
    name: str = ""
    kind: str = "features"
    wordlist: str = "spellchecker/resources/en.json.gz"  # "<package>/<file>": JSON {word: count}, gzipped
    head_alphas: tuple[float, ...] = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)


SENT = re.compile(r"[^.!?\n]+[.!?]*")
FEATURES = (
    "log_chars", "log_words", "log_sentences", "paragraphs", "sent_len_mean", "sent_len_std", "sent_len_max",
    "word_len_mean", "long_word_rate", "ttr", "ttr_window", "comma_rate", "period_rate", "question_rate",
    "exclaim_rate", "apostrophe_rate", "quote_rate", "colon_rate", "dash_rate", "paren_rate", "digit_rate",
    "upper_rate", "caps_word_rate", "lower_sentence_start", "lower_i_rate", "space_before_punct",
    "no_space_after_punct", "double_space", "repeat_word_rate", "contraction_rate", "misspelled_rate",
    "misspelled_unique_rate", "log_freq_mean", "rare_word_rate", "common_word_rate",
    *STYLE,
)


@lru_cache(maxsize=4)
def load_wordlist(spec: str = FeaturesConfig.wordlist) -> dict[str, float]:
    """``{word: log count}`` from a gzipped JSON word list inside an installed package."""
    import importlib.util
    from pathlib import Path

    pkg, _, rel = spec.partition("/")
    found = importlib.util.find_spec(pkg)
    path = Path(list(found.submodule_search_locations)[0]) / rel if found and found.submodule_search_locations else None
    if path is None or not path.is_file():
        raise StackError(f"word list {spec!r} not found: install it with `pip install pyspellchecker` (or set `wordlist:` in configs/members/features.yaml)")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        counts = json.load(f)
    return {w.lower(): math.log(c) for w, c in counts.items() if c > 0}


def _stats(text: str, words_known: dict[str, float], rare_log: float, common_log: float) -> list[float]:
    words = WORD.findall(text)
    lower = [w.lower() for w in words]
    n_w = max(len(words), 1)
    sents = [s for s in SENT.findall(text) if WORD.search(s)]
    sent_lens = np.array([len(WORD.findall(s)) for s in sents] or [0], float)
    letters = sum(c.isalpha() for c in text) or 1
    windows = [len(set(lower[i : i + 50])) / 50 for i in range(0, max(len(lower) - 49, 1), 25)] if len(lower) >= 50 else [len(set(lower)) / n_w]
    starts = [s.strip()[0] for s in sents if s.strip()]
    alpha = [w.replace("'", "") for w in lower if "'" not in w]
    missing = [w for w in alpha if w not in words_known]
    freqs = [words_known[w] for w in alpha if w in words_known]
    count = text.count
    return [
        math.log1p(len(text)), math.log1p(len(words)), math.log1p(len(sents)), float(len(re.findall(r"\n\s*\n", text)) + 1),
        float(sent_lens.mean()), float(sent_lens.std()), float(sent_lens.max()),
        float(np.mean([len(w) for w in words])) if words else 0.0, sum(len(w) >= 7 for w in words) / n_w,
        len(set(lower)) / n_w, float(np.mean(windows)),
        count(",") / n_w, count(".") / n_w, count("?") / n_w, count("!") / n_w, (count("'") + count("\u2019")) / n_w,
        (count('"') + count("\u201c") + count("\u201d")) / n_w, (count(":") + count(";")) / n_w, count("-") / n_w,
        (count("(") + count(")")) / n_w, sum(c.isdigit() for c in text) / max(len(text), 1),
        sum(c.isupper() for c in text) / letters, sum(w.isupper() and len(w) > 1 for w in words) / n_w,
        sum(c.islower() for c in starts) / max(len(starts), 1), words.count("i") / n_w,
        len(re.findall(r" [,.!?;:]", text)) / n_w, len(re.findall(r"[,.!?;:][A-Za-z]", text)) / n_w,
        len(re.findall(r"[^\S\n]{2,}", text)) / n_w,
        sum(a == b for a, b in zip(lower, lower[1:])) / n_w, sum("'" in w for w in words) / n_w,
        len(missing) / max(len(alpha), 1), len(set(missing)) / max(len(set(alpha)), 1),
        float(np.mean(freqs)) if freqs else 0.0, sum(f < rare_log for f in freqs) / max(len(alpha), 1),
        sum(f >= common_log for f in freqs) / max(len(alpha), 1),
    ]


def text_stats(texts: list[str], wordlist: str = FeaturesConfig.wordlist) -> np.ndarray:
    """Handcrafted statistics ``(n, len(FEATURES))`` float64 of ``texts``. The last call's result is kept: scoring
    essays asks for the same texts' statistics once per member that reads them (features and the heads' ``stats``)."""
    return _text_stats(tuple(texts), wordlist).copy()


@lru_cache(maxsize=1)
def _text_stats(texts: tuple[str, ...], wordlist: str) -> np.ndarray:
    known = load_wordlist(wordlist)
    ranked = sorted(known.values(), reverse=True)
    rare_log, common_log = ranked[min(20000, len(ranked) - 1)], ranked[min(1000, len(ranked) - 1)]
    base = np.array([_stats(t, known, rare_log, common_log) for t in texts], dtype=np.float64).reshape(len(texts), -1)
    return np.hstack([base, style_stats(texts)])


@register
class Features(FeaturizedKind):
    name = "features"
    config = FeaturesConfig

    def features(self, spec, texts, store):
        return text_stats(texts, spec.cfg.wordlist), {"essays": len(texts), "extra": {"feature_names": list(FEATURES)}}
