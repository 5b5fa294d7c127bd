"""Capitalisation, paragraph and run-on statistics: what the lowercasing, line-break-blind sentence encoders
cannot see. Part of the ``features`` member's columns (stack.members.features).

    from stack.members.style import style_stats, STYLE
    X = style_stats(["i like dogs. they is nice\\n\\nThe end"])      # (1, len(STYLE)) float64
"""

from __future__ import annotations

import re

import numpy as np

WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")
SENT_END = re.compile(r"[.!?]+")
NO_APOSTROPHE = {"dont", "cant", "wont", "im", "thats", "didnt", "doesnt", "isnt", "wasnt", "ive", "youre", "theyre",
                 "shouldnt", "couldnt", "wouldnt", "arent", "lets", "whats", "hes", "shes"}
TEXTING = {"u", "ur", "r", "b4", "gonna", "wanna", "gotta", "cuz", "bc", "lol", "ok", "idk", "tho", "thru"}
STYLE = (
    "n_paragraphs", "para_words_mean", "para_words_std", "para_words_max", "single_block", "newline_single_rate",
    "sent_start_upper_rate", "after_period_lower_rate", "midsent_caps_rate", "lower_i_share", "all_lower_flag",
    "title_case_word_rate", "no_apostrophe_contraction_rate", "texting_rate", "runon_max_words", "long_sent_rate_40",
    "repeated_punct_rate", "ellipsis_rate", "first_para_share", "last_para_share", "sentences_per_para",
    "comma_per_sentence", "trailing_space_rate", "starts_lower", "because_rate",
)


def _paragraphs_and_sentences(text: str):
    paras = [p for p in re.split(r"\n\s*\n|\n", text.strip()) if WORD.search(p)]
    sents = [s.strip() for s in SENT_END.split(text) if WORD.search(s)]
    para_words = np.array([len(WORD.findall(p)) for p in paras] or [0], float)
    sent_words = np.array([len(WORD.findall(s)) for s in sents] or [0], float)
    return paras, sents, para_words, sent_words


def _style(text: str) -> list[float]:
    words = WORD.findall(text)
    n_w, lower = max(len(words), 1), [w.lower() for w in words]
    paras, sents, pw, sl = _paragraphs_and_sentences(text)
    starts = [m for m in (re.search(r"[A-Za-z]", s) for s in sents) if m]
    after_period = re.findall(r"[.!?]\s+([A-Za-z])", text)
    # capitalised words not at a sentence start (nor after a line break)
    mid_caps = len(re.findall(r"(?<![.!?]\s)(?<![.!?]\s\s)(?<!^)(?<!\n)\b[A-Z][a-z]+", text))
    i_all = sum(w in ("i", "I") for w in words)
    n_nl = text.count("\n")
    return [
        float(len(paras)), float(pw.mean()), float(pw.std()), float(pw.max()), float(len(paras) <= 1),
        len(re.findall(r"(?<!\n)\n(?!\n)", text)) / max(n_nl, 1),
        sum(m.group(0).isupper() for m in starts) / max(len(starts), 1),
        sum(c.islower() for c in after_period) / max(len(after_period), 1), mid_caps / n_w,
        sum(w == "i" for w in words) / max(i_all, 1), float(not any(c.isupper() for c in text)),
        sum(w[:1].isupper() for w in words) / n_w, sum(w in NO_APOSTROPHE for w in lower) / n_w,
        sum(w in TEXTING for w in lower) / n_w, float(sl.max()), float((sl > 40).mean()),
        len(re.findall(r"([!?,])\1+", text)) / n_w, text.count("...") / n_w,
        pw[0] / max(pw.sum(), 1), pw[-1] / max(pw.sum(), 1), len(sents) / max(len(paras), 1),
        text.count(",") / max(len(sents), 1), len(re.findall(r" +\n", text)) / max(n_nl, 1),
        float(text.strip()[:1].islower()), lower.count("because") / n_w,
    ]


def style_stats(texts: list[str]) -> np.ndarray:
    """Statistics ``(n, len(STYLE))`` float64 of ``texts``."""
    return np.array([_style(t) for t in texts], dtype=np.float64).reshape(len(texts), len(STYLE))
