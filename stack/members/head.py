"""``kind: head``: another head over a member's cached embeddings, fitted per fold without re-embedding anything.

A frozen member's embeddings never saw a label, so a second head over them is as honest as the first: an RBF
kernel ridge (``krr``, the default: kernel width and alpha per target by exact leave-one-out), an RBF ``svr``, a
``ridge`` or a small ``mlp``, over chosen hidden-state blocks of the input (``layers``), each block scaled to unit length
(``normalize: layer``, the FB3 SVR-on-embeddings recipe). A fine-tuned member's OOF embeddings are refused: each
row's vector came from a fold model trained on the other folds' labels. In DVC a head is a ``head@<name>`` stage
(params.yaml ``heads: {name: input}``) that depends only on the input's cache.

    stack fit mpnet-krr                 # configs/members/mpnet-krr.yaml: input mpnet, layers [4..9], krr
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from stack import cache, paths
from stack.errors import StackError
from stack.heads.base import unit_rows
from stack.heads.kernel_ridge import ALPHAS, KernelRidge
from stack.heads.lgbm import LGBMBlender
from stack.heads.mlp import MLPHead
from stack.heads.prepared import PreparedHead
from stack.heads.ridge import Ridge
from stack.heads.svr import KernelSVR
from stack.members.features import FEATURES, text_stats
from stack.members.featurized import FeaturizedKind
from stack.members.registry import register
from stack.schema import LEAKY_EMBEDDINGS

HEAD_MODELS = {"krr": lambda c: KernelRidge(c.gamma_scales, c.alphas), "svr": lambda c: KernelSVR(c.svr_c, scaling="none"),
               "ridge": lambda c: Ridge(c.alphas), "mlp": lambda c: MLPHead(seeds=c.mlp_seeds),
               "lgbm": lambda c: LGBMBlender()}
NORMALIZE = ("layer", "row", "none")
STATS = ("none", "append", "block")


@dataclass(frozen=True)
class HeadConfig:
    name: str = ""
    kind: str = "head"
    input: str = ""  # the member whose cached emb_* columns this head reads: a frozen, features or grammar member
    layers: tuple[int, ...] = ()  # the input's hidden states to use (0 = embeddings, -1 = last); [] = all its columns
    normalize: str = "layer"  # layer: each block to unit length, then the row | row | none
    head: str = "krr"  # krr | svr | ridge | mlp | lgbm (LightGBM per target, the lgbm member's fixed defaults)
    # the features member's text statistics, computed from the essays and standardised on each fold's training rows:
    # none | append (as columns) | block (one more unit-length block, then each row to unit length; normalize: layer)
    stats: str = "none"
    pca: int = 0  # > 0: the embedding part reduced to (at most) this many principal components of the training rows
    gamma_scales: tuple[float, ...] = (0.25, 0.5, 1.0)  # krr: RBF gamma = scale / (2 median squared distance)
    alphas: tuple[float, ...] = ALPHAS  # krr and ridge: alpha grid (chosen per target by leave-one-out)
    svr_c: float = 1.0  # svr: C (gamma: scikit-learn's "scale" rule)
    mlp_seeds: int = 3  # mlp: seeds averaged (hidden 256, GELU, dropout 0.1/0.3, AdamW, early stopping)

    RUN_KEYS: ClassVar[tuple] = ()


def represent(emb: np.ndarray, meta: dict, cfg, where: str) -> np.ndarray:
    """The input's embedding columns ``(n, D)`` -> the head's rows: the chosen blocks, normalised (with ``stats:
    block`` the rows are scaled to unit length after the statistics join them, by stack.heads.prepared)."""
    emb = np.asarray(emb, np.float64)
    if cfg.layers and not meta.get("blocks"):
        raise StackError(f"{where}: layers {list(cfg.layers)}: the input member {cfg.input!r} has no hidden-state "
                         f"blocks (not a frozen member, or cached by an older stack: run `stack fit {cfg.input}`)")
    blocks = meta.get("blocks") or [{"layer": None, "pooling": None}]
    width = emb.shape[1] // len(blocks)
    chosen = list(range(len(blocks)))
    if cfg.layers:
        n_states = meta.get("n_states") or 1 + max(b["layer"] for b in blocks if b["layer"] is not None)
        want = {i + n_states if i < 0 else i for i in cfg.layers}
        chosen = [j for j, b in enumerate(blocks) if b["layer"] in want]
        missing = sorted(want - {blocks[j]["layer"] for j in chosen})
        if missing:
            raise StackError(f"{where}: layers {list(cfg.layers)}: the input member {cfg.input!r} has no hidden state "
                             f"{missing[0]} in its cache (it has {sorted({b['layer'] for b in blocks} - {None})})")
    parts = [emb[:, j * width:(j + 1) * width] for j in chosen]
    if cfg.normalize == "layer":
        parts = [unit_rows(p) for p in parts]
    X = np.hstack(parts)
    return unit_rows(X) if cfg.normalize in ("layer", "row") and cfg.stats != "block" else X


def rows(emb: np.ndarray, texts: list[str], meta: dict, cfg, where: str) -> np.ndarray:
    """The head's input rows: ``represent``'s, then (``stats`` other than none) the essays' text statistics."""
    X = represent(emb, meta, cfg, where)
    return X if cfg.stats == "none" else np.hstack([X, text_stats(texts)])


@register
class Head(FeaturizedKind):
    name = "head"
    config = HeadConfig
    emb_in_cache = False

    def check(self, spec) -> None:
        cfg = spec.cfg
        if cfg.head not in HEAD_MODELS:
            raise StackError(f"{spec.where}: head {cfg.head!r} is not one of {', '.join(HEAD_MODELS)}")
        if cfg.normalize not in NORMALIZE:
            raise StackError(f"{spec.where}: normalize {cfg.normalize!r} is not one of {', '.join(NORMALIZE)}")
        if cfg.stats not in STATS:
            raise StackError(f"{spec.where}: stats {cfg.stats!r} is not one of {', '.join(STATS)}")
        if cfg.stats == "block" and cfg.normalize != "layer":
            raise StackError(f"{spec.where}: stats: block joins the statistics as one more unit-length block, which "
                             f"needs normalize: layer (got {cfg.normalize!r}); use stats: append otherwise")
        if cfg.pca < 0:
            raise StackError(f"{spec.where}: pca must be 0 (none) or a number of components, got {cfg.pca}")
        if not cfg.input:
            raise StackError(f"{spec.where}: no `input`: name the member whose cached embeddings this head reads")
        paths.check_name(cfg.input)

    def inputs(self, spec) -> list[str]:
        return [spec.cfg.input]

    def head(self, spec):
        cfg = spec.cfg
        if cfg.stats == "none" and not cfg.pca:
            return lambda: HEAD_MODELS[cfg.head](cfg)
        n_stats = 0 if cfg.stats == "none" else len(FEATURES)
        return lambda: PreparedHead(HEAD_MODELS[cfg.head](cfg), n_stats, cfg.stats == "block", cfg.pca)

    def fit_features(self, spec, ctx):
        cfg, where, task = spec.cfg, spec.where, ctx.task
        frames, meta = {}, None
        for split, ids in (("train", ctx.ids), ("test", ctx.test[task.id])):
            df, meta = cache.read_member(cfg.input, split, task)
            cache.check_fingerprints({cfg.input: meta}, ctx.expected())
            frames[split] = df.set_index(task.id).reindex(ids.to_numpy())
        if meta["kind"] in LEAKY_EMBEDDINGS:
            raise StackError(f"{where}: input {cfg.input!r} is a {meta['kind']} member: "
                             f"{LEAKY_EMBEDDINGS[meta['kind']]}, so a head fitted on them sees the labels of the rows "
                             "it scores; read a frozen, features or grammar member instead")
        if not cache.emb_columns(frames["train"]):
            raise StackError(f"{where}: input {cfg.input!r} caches no embeddings (emb_* columns) to fit a head on")
        texts = {"train": ctx.train[task.text].tolist(), "test": ctx.test[task.text].tolist()}
        X, X_test = (rows(frames[s][cache.emb_columns(frames[s])].to_numpy(), texts[s], meta, cfg, where)
                     for s in frames)
        extra = {"input": cfg.input, "input_config": meta["config"],
                 "input_meta": {"blocks": meta.get("blocks"), "n_states": meta.get("n_states")}}
        return X, X_test, {"essays": len(X) + len(X_test), "extra": extra}

    def featurizer(self, spec, folder, meta: dict, strict: bool):
        source = meta.get("input_meta", {})

        def featurize(texts, upstream):
            if spec.cfg.input not in upstream:
                raise StackError(f"{folder}: head {spec.name!r} needs member {spec.cfg.input!r}'s embeddings; score "
                                 "it through a Scorer (stack predict), which runs its input first")
            return rows(upstream[spec.cfg.input], texts, source, spec.cfg, spec.where)

        return featurize
