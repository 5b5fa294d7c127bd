"""``kind: frozen``: a transformer's hidden states, pooled over whole essays, with a ridge head per fold.

The backbone never sees a label, so its embeddings are computed once per essay: they are kept by essay content
(stack.members.store), and a new test set costs only its new essays. See stack.backbones.embedder for how essays
are chunked, batched and run (bf16 where native, packed weights, CPU attention), and stack.backbones.pooling for
the pooling keys.

    stack fit mpnet                                   # configs/members/mpnet.yaml
    stack fit mpnet --set layers=[-1] --set pooling=[mean,max] --set backbone.path=/data/mpnet
"""

from __future__ import annotations

import resource
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from stack import paths, runtime
from stack.config import sha256_json
from stack.errors import StackError
from stack.members.featurized import FeaturizedKind
from stack.members.registry import check_transformer, register

BACKBONE = "backbone"  # a bundle's copy of the weights, beside member.json
EMBED_KEYS = ("max_len", "stride", "truncate", "pooling", "layers", "layer_mode", "layer_weights", "precision")
EMBEDDER_VERSION = 1  # bump when the chunking, pooling or embedding code changes what it computes


@dataclass(frozen=True)
class FrozenConfig:
    name: str = ""
    kind: str = "frozen"
    backbone: str = ""  # a name under configs/backbones/ (or inline keys: {path: DIR})
    max_len: int = 512  # tokens per chunk, specials included
    stride: int = 64  # tokens shared by consecutive chunks of a long essay
    truncate: bool = False  # True: only the first max_len tokens of each essay
    pooling: tuple[str, ...] = ("mean",)  # token poolings side by side (stack.backbones.pooling)
    layers: tuple[int, ...] = (-1,)  # hidden-state indices: 0 = embeddings, -1 = last layer; [] = all
    layer_mode: str = "concat"  # concat | mean | weighted (fixed layer_weights)
    layer_weights: tuple[float, ...] = ()
    batch_size: int = 32
    precision: str = "auto"  # auto (bf16 where native, if it matches fp32 on a sample) | bf16 | fp16 (CUDA) | fp32
    device: str = "auto"  # auto (CUDA when there is one) | cpu | cuda | cuda:<k>
    engine: str = "auto"  # auto (onnx for fp32 on the CPU, else torch) | torch | onnx (stack.backbones.ort)
    threads: int = 0  # intra-op threads on the CPU; 0 = every core this process may use
    shard_size: int = 512  # essays embedded and stored at a time (memory bound, resume granularity)
    head_alphas: tuple[float, ...] = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0)

    RUN_KEYS: ClassVar[tuple] = ("device", "engine", "threads", "shard_size", "batch_size")


def blocks(cfg, n_states: int | None) -> list[dict] | None:
    """What each ``emb_*`` block of ``hidden size`` columns holds, in column order: its hidden state (``layer``,
    counted from 0 = embeddings; None where layers are mixed) and its pooling. Heads select blocks by layer."""
    if n_states is None:
        return None
    layers = [i % n_states for i in (cfg.layers or range(n_states))] if cfg.layer_mode == "concat" else [None]
    return [{"layer": layer, "pooling": p} for layer in layers for p in cfg.pooling]


def embedding_key(spec, weights: str) -> str:
    """What decides a stored embedding: the weights (``weights_stamp``), how essays are chunked and pooled, and the
    version of the code that does it."""
    cfg = spec.cfg
    return sha256_json({"weights": weights, "version": EMBEDDER_VERSION, **{k: getattr(cfg, k) for k in EMBED_KEYS}})


@register
class Frozen(FeaturizedKind):
    name = "frozen"
    config = FrozenConfig
    uses_backbone = True

    def check(self, spec) -> None:
        cfg = spec.cfg
        try:
            from stack.backbones.pooling import PoolingSpec

            PoolingSpec.of(cfg).check(trainable=False)
        except ValueError as e:
            raise StackError(f"{spec.where}: {e}") from None
        check_transformer(spec)
        if not cfg.truncate and not 0 <= cfg.stride < cfg.max_len - 2:
            raise StackError(f"{spec.where}: stride {cfg.stride} must be below max_len - 2 (the chunk minus its "
                             f"special tokens), got max_len {cfg.max_len}")

    def open_store(self, spec):
        """The member's embedding store and its backbone, loaded on first need and kept for the test essays."""
        from stack.backbones.loading import weights_stamp
        from stack.members.store import EmbeddingStore

        stamp = weights_stamp(spec.backbone)
        return EmbeddingStore(paths.embedding_store(spec.name), embedding_key(spec, stamp)), [], stamp

    def features(self, spec, texts, store):
        from stack.members.store import text_hash

        if store is None:
            return self._embed(spec, texts, self._load(spec))[0], {}
        store, loaded, stamp = store
        hashes = [text_hash(t) for t in texts]
        todo = store.missing(hashes)
        if todo:
            first = {h: t for h, t in zip(reversed(hashes), reversed(texts))}
            loaded[:] = loaded or [self._load(spec)]
            states = loaded[0][1].config.num_hidden_layers + 1
            self._embed(spec, [first[h] for h in todo], loaded[0], store.precision,
                        on_shard=lambda rows, emb, prec: store.add([todo[i] for i in rows], emb, prec, states))
        if store.n_states is None:  # every essay stored by an earlier version: read the count from config.json
            from stack.backbones.loading import n_hidden_states

            store.n_states = n_hidden_states(spec.backbone)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        info = {"essays": len(texts), "embedded": len(todo), "reused": len(set(hashes)) - len(todo),
                "precision": store.precision, "peak_rss_mb": peak,
                "extra": {"precision": store.precision, "blocks": blocks(spec.cfg, store.n_states),
                          "n_states": store.n_states, "weights": stamp}}
        return store.get(hashes), info

    def _load(self, spec, strict: bool = False):
        from stack.backbones.loading import load_backbone

        return load_backbone(spec.backbone, safetensors_only=strict)

    def _embed(self, spec, texts, loaded, precision=None, on_shard=None):
        from tqdm.auto import tqdm

        from stack.backbones.chunks import chunk_lengths, encode
        from stack.backbones.embedder import embed_texts
        from stack.backbones.estimate import estimate

        tokenizer, model = loaded
        cfg = spec.cfg
        encoded = encode(texts, tokenizer)
        lengths = chunk_lengths(encoded, tokenizer, cfg.max_len, cfg.stride, cfg.truncate)
        total = len(lengths)
        estimate(f"fit@{spec.name}" if on_shard else spec.name, len(texts), lengths, model, cfg, spec.where,
                 precision)
        with tqdm(total=total, desc=f"embed {spec.name}", unit="chunk", mininterval=2, disable=len(texts) < 64) as bar:
            return embed_texts(texts, tokenizer, model, cfg, spec.where, precision, bar.update, on_shard, encoded)

    def featurizer(self, spec, folder: Path, meta: dict, strict: bool):
        loaded, fitted = [], meta.get("precision")

        def featurize(texts, upstream):
            loaded[:] = loaded or [self._load(spec, strict)]
            prec = runtime.scoring_precision(fitted, spec.cfg.device, spec.where)
            return self._embed(spec, texts, loaded[0], prec)[0]

        return featurize

    def export(self, spec, meta: dict, src: Path, dst: Path, keep_folds: bool, by_reference: bool) -> dict:
        """The heads, and the backbone's tokenizer + weights as safetensors in ``dst/backbone/`` -- or, with
        ``by_reference`` and a packaged backbone, a reference to its package."""
        from stack.backbones.loading import packaged_folder, weights_stamp

        fitted = meta.get("weights")
        if fitted and weights_stamp(spec.backbone) != fitted:
            raise StackError(f"{spec.backbone.where}: the weights differ from those `stack fit {spec.name}` embedded "
                             f"with; run `stack fit {spec.name}` (or `dvc repro`) before exporting")
        super().export(spec, meta, src, dst, keep_folds, by_reference)
        if by_reference and spec.backbone.packaged and not spec.backbone.path and packaged_folder(spec.backbone.packaged):
            return {}
        tokenizer, model = self._load(spec)
        model.save_pretrained(dst / BACKBONE, safe_serialization=True)
        tokenizer.save_pretrained(dst / BACKBONE)
        return {"path": BACKBONE, "packaged": None}
