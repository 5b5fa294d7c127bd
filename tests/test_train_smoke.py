"""Every fine-tuning technique toggled on the tiny DeBERTa: forward, backward, step, save, load, same outputs.

Also: the tiny DeBERTa learns a synthetic task whose target depends on the text (loss falls, OOF beats the mean).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stack.backbones.config import BackboneConfig, load_backbone_config
from stack.backbones.pooling import TOKEN_POOLINGS
from stack.config import build
from stack.metrics import mcrmse
from stack.train.batching import encode, prepare_texts
from stack.train.config import TrainConfig, validate
from stack.train.loop import predict, train_fold
from stack.train.model import build_model

BASE = {"backbone": "tiny-deberta", "max_len": 48, "batch_size": 4, "eval_batch_size": 8, "epochs": 2,
        "lr": 1e-3, "head_lr": 1e-2, "precision": "fp32", "dvclive": False, "threads": 1}


@pytest.fixture
def backbone(tmp_path, tiny_deberta_dir, monkeypatch) -> BackboneConfig:
    """configs/backbones/tiny-deberta.yaml pointing at the tiny DeBERTa (cwd = tmp_path), loaded; one torch thread."""
    (tmp_path / "configs" / "backbones").mkdir(parents=True)
    (tmp_path / "configs" / "backbones" / "tiny-deberta.yaml").write_text(f"path: {tiny_deberta_dir}\nmax_positions: 512\n")
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the 2 shared CPU cores: more threads only contend
    yield load_backbone_config("tiny-deberta")
    torch.set_num_threads(threads)


def synthetic(n: int, seed: int = 0):
    """Essays of filler words plus a cue word: 'happy' -> 4.0 on every target, 'sad' -> 2.0."""
    rng = np.random.default_rng(seed)
    filler = ["the", "a", "of", "and", "to", "in", "is", "was", "it", "that", "for", "on", "with", "as", "be", "at",
              "by", "this", "have", "from"]
    texts, y = [], []
    for i in range(n):
        words = list(rng.choice(filler, 12)) + ["happy" if i % 2 else "sad"] * 3
        rng.shuffle(words)
        texts.append(("\n\n" if i % 3 == 0 else " ").join(words))
        y.append([4.0 if i % 2 else 2.0] * 6)
    return texts, np.array(y)


def cfg_of(**kw) -> TrainConfig:
    return validate(build(TrainConfig, {**BASE, **kw}, "test"), "test")


TECHNIQUES = {
    **{f"pooling-{p}": {"pooling": [p]} for p in sorted(TOKEN_POOLINGS)},
    "poolings-side-by-side": {"pooling": ["mean", "max", "attention"]},
    "layers-weighted": {"layers": [], "layer_mode": "weighted"},  # learned softmax weights over every state
    "layers-weighted-init": {"layers": [-2, -1], "layer_mode": "weighted", "layer_weights": [1, 3]},
    "layers-concat": {"layers": [-3, -2, -1], "layer_mode": "concat"},  # every state of the 2-layer model
    "layers-mean": {"layers": [-2, -1], "layer_mode": "mean"},
    "llrd": {"llrd": 0.7},
    "reinit": {"reinit_layers": 1},
    "freeze": {"freeze_embeddings": True, "freeze_layers": 1},
    "checkpointing": {"grad_checkpointing": True},
    "accumulation": {"accum_steps": 3},
    "no-clip": {"max_grad_norm": 0.0},
    "bf16": {"precision": "bf16"},
    "mse": {"loss": "mse"},
    "rmse-weighted": {"loss": "rmse", "target_weights": [2, 1, 1, 1, 1, 0.5]},
    "smooth_l1-beta": {"loss": "smooth_l1", "smooth_l1_beta": 0.25},
    "linear-warmup": {"scheduler": "linear", "warmup": 0.2},
    "constant": {"scheduler": "constant", "warmup": 0.1},
    "keep-best": {"keep": "best"},
    "ema": {"ema_decay": 0.9},
    "swa": {"swa": True, "swa_start_epoch": 2, "swa_lr": 1e-3, "swa_anneal_steps": 2},
    "fgm": {"fgm_eps": 0.5, "fgm_start_epoch": 1},
    "awp": {"awp_eps": 0.01, "awp_lr": 0.5, "awp_start_epoch": 1},
    "paragraph-strip": {"paragraph": "strip"},
    "paragraph-token": {"paragraph": "token"},
    "multi-sample-dropout": {"head_dropout": 0.3, "msd_samples": 3},
    "backbone-dropout": {"backbone_dropout": 0.1},
    "random-batches": {"bucket_batches": 0},
}


@pytest.mark.parametrize("name", sorted(TECHNIQUES))
def test_technique_trains_saves_and_reloads(name, backbone, tmp_path):
    from safetensors.torch import load_model, save_model

    cfg = cfg_of(**TECHNIQUES[name])
    texts, y = synthetic(14)
    torch.manual_seed(0)
    tokenizer, model = build_model(cfg, backbone, "test")
    ids = encode(prepare_texts(texts, cfg.paragraph, cfg.paragraph_token), tokenizer, cfg.max_len)
    if cfg.paragraph == "token":
        br = tokenizer.convert_tokens_to_ids(cfg.paragraph_token)
        assert br in ids[0] and model.backbone.get_input_embeddings().num_embeddings == len(tokenizer)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    res = train_fold(model, cfg, ids[:10], y[:10], ids[10:], y[10:], tokenizer.pad_token_id, torch.device("cpu"))
    assert len(res.history) == 2 and np.isfinite([h["train_loss"] for h in res.history]).all()
    moved = [n for n, p in model.named_parameters() if not torch.equal(p, start[n])]
    assert any(n.startswith("backbone.") for n in moved) and any(n.startswith("head.") for n in moved)
    if name == "checkpointing":
        assert getattr(model.backbone, "is_activation_checkpointing", None) or model.backbone.is_gradient_checkpointing
    if name == "freeze":
        assert not any(n.startswith("backbone.embeddings") or ".layer.0." in n for n in moved)
    if cfg.layer_mode == "weighted":
        assert "pool.logits" in moved  # the layer weights are learned
    if "attention" in cfg.pooling:
        assert any(n.startswith("pool.tokens.") for n in moved)
    n_layers = len(cfg.layers) if cfg.layer_mode == "concat" else 1
    assert res.model.out_dim == 32 * len(cfg.pooling) * n_layers  # hidden size 32
    save_model(res.model, str(tmp_path / "w.safetensors"))
    torch.manual_seed(1)  # a differently initialised head must be overwritten by the load
    _, fresh = build_model(cfg, backbone, "test")
    load_model(fresh, str(tmp_path / "w.safetensors"))
    pred, feats = predict(fresh, ids[10:], 8, tokenizer.pad_token_id, torch.device("cpu"), res.precision)
    assert res.precision == ("bf16" if name == "bf16" else "fp32")
    atol = 2e-2 if res.precision == "bf16" else 1e-5
    np.testing.assert_allclose(pred, res.valid_pred, atol=atol)
    assert feats.shape == res.valid_feats.shape == (4, fresh.out_dim)


def test_tiny_deberta_learns_a_text_dependent_target(backbone):
    """Two folds: the training loss falls and out-of-fold predictions beat predicting the training mean."""
    cfg = cfg_of(epochs=6, batch_size=8, lr=1e-2, head_lr=3e-2, warmup=0.1)
    texts, y = synthetic(48)
    fold = np.arange(48) % 4 // 2
    oof = np.zeros_like(y)
    baseline = np.zeros_like(y)
    for k in (0, 1):
        torch.manual_seed(k)
        tokenizer, model = build_model(cfg, backbone, "test")
        ids = encode(texts, tokenizer, cfg.max_len)
        tr, va = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
        res = train_fold(model, cfg, [ids[i] for i in tr], y[tr], [ids[i] for i in va], y[va],
                         tokenizer.pad_token_id, torch.device("cpu"), seed=k)
        losses = [h["train_loss"] for h in res.history]
        assert losses[-1] < 0.5 * losses[0], losses
        oof[va], baseline[va] = res.valid_pred, y[tr].mean(0)
    assert mcrmse(y, oof)[0] < 0.7 * mcrmse(y, baseline)[0]


def test_fp16_on_cpu_is_refused(backbone):
    """The training loop asks stack.runtime too: fp16 on the CPU stops before the first step."""
    from stack.errors import StackError

    cfg = cfg_of(precision="fp16", name="tiny")
    texts, y = synthetic(6)
    tokenizer, model = build_model(cfg, backbone, "test")
    ids = encode(texts, tokenizer, cfg.max_len)
    with pytest.raises(StackError, match="tiny: precision fp16 needs a CUDA device"):
        train_fold(model, cfg, ids[:4], y[:4], ids[4:], y[4:], tokenizer.pad_token_id, torch.device("cpu"))


def test_max_len_beyond_the_position_table_is_refused(backbone):
    from stack.errors import StackError

    with pytest.raises(StackError, match="test: max_len 1024 exceeds the 512 positions of the backbone"):
        build_model(cfg_of(max_len=1024), backbone, "test")


def test_unknown_layer_for_this_backbone_is_refused(backbone):
    from stack.errors import StackError

    with pytest.raises(StackError, match="test: layers \\[5\\] out of range: this backbone has 3 hidden states"):
        build_model(cfg_of(layers=[5]), backbone, "test")
