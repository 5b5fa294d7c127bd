"""Score new essays (any CSV with text_id, full_text) with the saved stage-one models and the saved blender.

Each model is rebuilt from what was saved beside its cache (the resolved config, the fold heads or the fold
weights), so editing a config afterwards cannot silently change predictions; the blender refuses models whose
cache changed since it was fitted.

    stack predict --input essays.csv --out scores.csv                # the models the saved blend was fitted on
    stack predict --models minilm,tfidf --input essays.csv --out scores.csv
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from stack import paths
from stack.errors import StackError
from stack.schema import ID, PRED_COLS, TEXT, emb_cols


def _frame(ids, preds: np.ndarray, emb: np.ndarray | None) -> pd.DataFrame:
    parts = [pd.DataFrame({ID: list(ids)}), pd.DataFrame(preds, columns=list(PRED_COLS))]
    if emb is not None:
        parts.append(pd.DataFrame(np.asarray(emb, np.float32), columns=emb_cols(emb.shape[1])))
    return pd.concat(parts, axis=1)


def _frozen(name: str, texts: list[str]) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """(predictions, embeddings or None, cache meta) of a frozen member (backbone, tfidf, features or grammar)."""
    from stack.config import ModelConfig, build
    from stack.heads import load_heads, predict_heads

    heads, meta = load_heads(name)
    kind, saved = meta.get("kind"), meta["config_json"]
    where = f"{paths.model_dir(name)}/heads.joblib"
    if kind == "backbone":
        import dataclasses

        import torch

        from stack.backbones.loading import load_backbone
        from stack.embed import embed_texts

        cfg = build(ModelConfig, saved, where)
        # the machine scoring new essays need not be the one that embedded the training essays
        on_gpu = torch.cuda.is_available()
        cfg = dataclasses.replace(cfg, device="auto", dtype="auto" if cfg.dtype == "fp16" and not on_gpu else cfg.dtype)
        tokenizer, model = load_backbone(cfg)
        X, _ = embed_texts(texts, tokenizer, model, cfg)
        return predict_heads(heads, X), X, meta
    if kind == "tfidf":
        return predict_heads(heads, np.asarray(texts, dtype=object)), None, meta
    if kind == "features":
        from stack.textfeatures.stats import FeaturesConfig, text_stats

        X = text_stats(texts, build(FeaturesConfig, saved, where).wordlist)
        return predict_heads(heads, X), X, meta
    if kind == "grammar":
        from stack.textfeatures.grammar import GrammarConfig, grammar_features

        X = grammar_features(texts, build(GrammarConfig, saved, where))
        return predict_heads(heads, X), X, meta
    raise StackError(f"{where}: unknown member kind {kind!r}; run `stack embed {name}` again")


def _fine_tuned(name: str, texts: list[str]) -> tuple[np.ndarray, np.ndarray, dict]:
    """Mean over the saved fold models of predictions ``(n, 6)`` and pooled embeddings ``(n, d)``."""
    from stack.cache import read_model
    from stack.train import dist
    from stack.train.batching import encode, prepare_texts
    from stack.train.loop import predict
    from stack.train.store import load_fold_model

    _, meta = read_model(name, "test")
    folds = sorted(int(p.name[4:]) for p in paths.model_dir(name).glob("fold*") if p.name[4:].isdigit())
    if not folds:
        raise StackError(f"{paths.model_dir(name)}: no fold weights; run `stack train {name}`")
    preds, feats = [], []
    for k in folds:
        tokenizer, model, cfg = load_fold_model(name, k)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        encoded = encode(prepare_texts(texts, cfg.paragraph, cfg.paragraph_token), tokenizer, cfg.max_len)
        p, f = predict(model, encoded, cfg.eval_batch_size, pad, dist.device_for(cfg.device), "auto")
        preds.append(p)
        feats.append(f)
    return np.mean(preds, axis=0), np.mean(feats, axis=0), meta


def member_frame(name: str, essays: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """DataFrame[text_id, pred_* x 6, emb_*] of one stage-one model on ``essays``, and its config hash."""
    paths.check_name(name)
    texts = essays[TEXT].tolist()
    if (paths.model_dir(name) / "heads.joblib").is_file():
        preds, emb, meta = _frozen(name, texts)
    elif paths.model_dir(name).is_dir():
        preds, emb, meta = _fine_tuned(name, texts)
    else:
        raise StackError(f"model {name!r} has no saved stage-one model under {paths.model_dir(name)}; "
                         f"run `stack embed {name}` or `stack train {name}` (or `dvc repro`)")
    return _frame(essays[ID], preds, emb), meta["config"]


def run_predict(input_csv: Path, out_csv: Path, models: list[str] | None = None) -> pd.DataFrame:
    """Scores DataFrame[text_id, *TARGETS] for the essays in ``input_csv``, written to ``out_csv``."""
    from stack.blend.persist import check_blend, load_blend, predict_blend
    from stack.cache import atomic_write
    from stack.data import read_essays

    essays = read_essays(input_csv)
    fitted = load_blend()
    models = list(models or fitted.layout.models)
    extra = [m for m in models if m not in fitted.layout.models]
    if extra:
        raise StackError(f"the saved blend was fitted on {', '.join(fitted.layout.models)}, not on {extra[0]!r}; "
                         f"pass --models {','.join(fitted.layout.models)} or rerun `stack blend` with it")
    missing = [m for m in fitted.layout.models if m not in models]
    if missing:
        raise StackError(f"the saved blend needs model {missing[0]!r} too (it was fitted on "
                         f"{', '.join(fitted.layout.models)}); pass --models {','.join(fitted.layout.models)}")
    frames, hashes = {}, {}
    for name in models:
        frames[name], hashes[name] = member_frame(name, essays)
    check_blend(fitted, {"models": hashes})
    scores = predict_blend(fitted, {m: frames[m] for m in fitted.layout.models})
    atomic_write(Path(out_csv), lambda p: scores.to_csv(p, index=False))
    return scores
