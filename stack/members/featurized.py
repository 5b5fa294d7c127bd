"""Kinds that turn essays into a feature matrix and cross-fit a head on the fixed folds (frozen transformers,
TF-IDF, text statistics, grammar-error rates): the steps they share, written once.

A subclass implements ``features(spec, texts, store) -> (X, info)`` (or ``fit_features``, for kinds whose
features are not computed from the texts) and ``head(spec) -> factory``; ``fit`` cross-fits the head, saves the
fold heads as ``heads.{json,safetensors}`` (arrays, no pickle) and returns the predictions (and X as embeddings
when ``emb_in_cache``); ``scorer`` reloads the heads and applies them to new essays' features (``store`` None:
nothing is cached).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from stack import paths, state
from stack.heads.crossfit import cross_fit, predict_heads
from stack.heads.ridge import Ridge
from stack.members.registry import Fitted, Kind

HEADS = "heads"


def chosen_alphas(heads: list, targets: tuple[str, ...]) -> dict[str, list[float]]:
    """Per target, the ridge alpha each fold's head chose."""
    if not all(hasattr(h, "alpha_") for h in heads):
        return {}
    per_fold = [np.broadcast_to(np.asarray(h.alpha_, float), (len(targets),)) for h in heads]
    return {t: [float(a[i]) for a in per_fold] for i, t in enumerate(targets)}


class FeaturizedKind(Kind):
    emb_in_cache: ClassVar[bool] = True  # write X as the cache's emb_* columns

    def features(self, spec, texts: list[str], store: Path | None):
        """-> (X with one row per text, info dict)."""
        raise NotImplementedError

    def head(self, spec):
        """-> a factory of unfitted heads (``fit(X, y (n, k))``, ``predict(X) -> (m, k)``, ``alpha_``); by default
        the exact-LOO ridge over the config's ``head_alphas``."""
        return lambda: Ridge(alphas=spec.cfg.head_alphas)

    def open_store(self, spec):
        """What ``features`` gets as ``store`` while fitting (a frozen member: its embedding store and backbone)."""
        return paths.embedding_store(spec.name)

    def fit_features(self, spec, ctx):
        """-> (X of the training essays, X of the test essays, info). Train and test essays are featurized apart,
        so that `stack predict` on the same test CSV, on the same machine, batches them as here (and reproduces
        submission.csv); elsewhere, or with essays embedded earlier, expect float rounding differences."""
        store, text = self.open_store(spec), ctx.task.text
        X, info = self.features(spec, ctx.train[text].tolist(), store)
        X_test, info_test = self.features(spec, ctx.test[text].tolist(), store)
        for k in ("essays", "embedded", "reused"):
            if k in info:
                info[k] += info_test[k]
        info["peak_rss_mb"] = info_test.get("peak_rss_mb")
        return X, X_test, info

    def fit(self, spec, ctx, folder: Path) -> Fitted:
        X, X_test, info = self.fit_features(spec, ctx)
        oof, test, heads = cross_fit(self.head(spec), X, ctx.y, ctx.fold, X_test)
        state.save(heads, folder / HEADS, info={"member": spec.name, "folds": len(heads)})
        grid = tuple(getattr(spec.cfg, "head_alphas", ()))
        alphas = chosen_alphas(heads, ctx.task.targets)
        edge = sorted({a for fold in alphas.values() for a in fold if grid and a in (min(grid), max(grid))})
        extra = {"head": {"alphas_grid": list(grid), "chosen": alphas} if alphas else {}, **info.pop("extra", {})}
        emb, emb_test = (X, X_test) if self.emb_in_cache else (None, None)
        return Fitted(oof, test, emb, emb_test, extra, {**info, "alphas_at_edge": edge})

    def featurizer(self, spec, folder: Path, meta: dict, strict: bool):
        """-> ``(texts, upstream) -> X`` for scoring (``upstream``: the embeddings of the members this one reads; a
        kind with weights to load overrides it to load them once; ``meta``: the member.json)."""
        return lambda texts, upstream: self.features(spec, texts, None)[0]

    def scorer(self, spec, folder: Path, meta: dict, strict: bool = False):
        heads = state.load(folder / HEADS, f"run `stack fit {spec.name}`")
        featurize = self.featurizer(spec, folder, meta, strict)

        def score(texts, upstream=None):
            X = featurize(texts, upstream or {})
            return predict_heads(heads, X), (X if self.emb_in_cache else None)

        return score

    def export(self, spec, meta: dict, src: Path, dst: Path, keep_folds: bool, by_reference: bool) -> dict:
        """The fold heads; ridge and kernel ridge heads become their exact average (one head) unless
        ``keep_folds``."""
        heads = state.load(src / HEADS, f"run `stack fit {spec.name}`")
        if not keep_folds and len({type(h) for h in heads}) == 1 and hasattr(type(heads[0]), "average"):
            heads = [type(heads[0]).average(heads)]
        state.save(heads, dst / HEADS, info={"member": spec.name, "folds": len(heads)})
        return {}
