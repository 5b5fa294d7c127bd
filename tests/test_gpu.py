"""The CUDA code paths (issue 17): fp16 with the grad scaler, bf16 autocast, EMA/SWA/FGM/AWP and gradient
checkpointing on CUDA, frozen and fine-tuned members fitted and scored on CUDA, DDP on an nccl group. The dry run of
benchmarks/gpu_check.py, which needs no GPU, is tests/test_gpu_check.py.

The ``gpu`` tests are skipped without a CUDA device. ``STACK_GPU_TESTS_ON_CPU=1`` runs them on the CPU instead where
the path exists there (fp16 needs CUDA; DDP runs on gloo), to check their own logic on a machine without a GPU:

    STACK_GPU_TESTS_ON_CPU=1 HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q -m gpu tests/test_gpu.py
"""

from __future__ import annotations

import os
import shutil
import socket

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors import safe_open

from stack import cache, paths, runtime
from stack.backbones.config import load_backbone_config
from stack.backbones.depth import encoder_layers
from stack.config import build, load_params
from stack.members import fit_member, load_scorer
from stack.stages import run_folds
from stack.train import dist
from stack.train.batching import collate, encode
from stack.train.config import TrainConfig, validate
from stack.train.loop import _steps, enable_checkpointing, loss_fn, predict, train_fold
from stack.train.model import build_model
from stack.train.regularizers import AWP, FGM

from conftest import DATA, FB3, PRED_COLS, TARGETS, make_project

ON_CPU = os.environ.get("STACK_GPU_TESTS_ON_CPU") == "1"
DEVICE = "cpu" if ON_CPU else "cuda"
DEV = torch.device("cpu") if ON_CPU else torch.device("cuda", 0)
BASE = {"backbone": "tiny", "max_len": 48, "batch_size": 4, "eval_batch_size": 8, "epochs": 2, "lr": 1e-3,
        "head_lr": 1e-2, "precision": "fp32", "dvclive": False, "device": DEVICE}
FAST_FT = ["epochs=1", "max_len=48", "batch_size=8", "eval_batch_size=16", "lr=0.001", "dvclive=false"]


def on_gpu(fn):
    """Marked ``gpu``; skipped without a CUDA device unless STACK_GPU_TESTS_ON_CPU=1."""
    fn = pytest.mark.skipif(not ON_CPU and not torch.cuda.is_available(), reason="needs a CUDA device")(fn)
    return pytest.mark.gpu(fn)


def fp16_only_on_cuda() -> None:
    if DEV.type != "cuda":
        pytest.skip("fp16 needs a CUDA device")


@pytest.fixture
def backbone(tmp_path, tiny_deberta_dir, monkeypatch):
    """configs/backbones/tiny.yaml on the tiny DeBERTa (cwd = tmp_path), loaded."""
    (tmp_path / "configs" / "backbones").mkdir(parents=True)
    (tmp_path / "configs" / "backbones" / "tiny.yaml").write_text(f"path: {tiny_deberta_dir}\nmax_positions: 512\n")
    monkeypatch.chdir(tmp_path)
    return load_backbone_config("tiny")


def cfg_of(**kw) -> TrainConfig:
    return validate(build(TrainConfig, {**BASE, **kw}, "test"), "test")


def essays(tokenizer, cfg, n: int):
    """The first ``n`` FB3 essays as token ids and their ``(n, 6)`` scores."""
    df = pd.read_csv(DATA / "train.csv").iloc[:n]
    return encode(df["full_text"].tolist(), tokenizer, cfg.max_len), df[list(TARGETS)].to_numpy()


def weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def first_linear(model) -> torch.nn.Linear:
    return next(m for m in model.backbone.modules() if isinstance(m, torch.nn.Linear))


# --- precision ------------------------------------------------------------------------------------------------------

@on_gpu
def test_fp16_steps_keep_fp32_weights_and_the_scaler_skips_an_overflow(backbone):
    fp16_only_on_cuda()
    cfg = cfg_of(precision="fp16")
    tokenizer, model = build_model(cfg, backbone, "test")
    ids, y = essays(tokenizer, cfg, 8)
    steps = _steps(model, cfg, [len(x) for x in ids], DEV)
    assert steps.precision == "fp16" and steps.scaler.is_enabled()
    batch = [t.to(DEV) for t in collate(ids, np.arange(8), tokenizer.pad_token_id)]
    target = torch.as_tensor(y, dtype=torch.float32, device=DEV)

    def one_step() -> torch.Tensor:
        loss = steps.loss(*batch, target)
        steps.scaler.scale(loss).backward()
        steps.step(epoch=1)
        return loss

    dtypes = []
    hook = first_linear(model).register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    start = weights(model)
    loss = one_step()
    hook.remove()
    assert dtypes == [torch.float16] and loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(p.dtype == torch.float32 and p.device == DEV for p in model.parameters())  # fp32 master weights
    assert any(not torch.equal(p, start[n]) for n, p in model.named_parameters())
    assert 0 < steps.scaler.get_scale() < float("inf")

    steps.scaler.update(new_scale=2.0**100)  # the scaled gradients overflow fp16: the step must be skipped
    before = weights(model)
    one_step()
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert steps.scaler.get_scale() == 2.0**99  # and the scale backs off


@on_gpu
def test_bf16_autocast_runs_the_backbone_in_bf16_and_returns_fp32_outputs(backbone):
    cfg = cfg_of(precision="bf16")
    tokenizer, model = build_model(cfg, backbone, "test")
    model.to(DEV)
    ids, _ = essays(tokenizer, cfg, 4)
    batch = [t.to(DEV) for t in collate(ids, np.arange(4), tokenizer.pad_token_id)]
    a = torch.randn(16, 16, device=DEV)
    dtypes = []
    hook = first_linear(model).register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    with runtime.autocast("bf16", DEV):
        product = a @ a
        preds, feats = model(*batch)
    hook.remove()
    assert product.dtype == torch.bfloat16 and dtypes == [torch.bfloat16]
    assert preds.dtype == feats.dtype == torch.float32 and torch.isfinite(preds).all()
    if DEV.type == "cuda" and torch.cuda.get_device_capability(DEV)[0] >= 8:  # Ampere on: bf16 in hardware
        assert runtime.native_bf16(DEV) and runtime.precision("auto", DEV) == "bf16"


# --- regularisers and gradient checkpointing ------------------------------------------------------------------------

def spy(monkeypatch, cls, snapshot) -> list[dict]:
    """Record, for every attack of ``cls``, whether it moved the weights and whether restore() put them back."""
    log, attack, restore = [], cls.attack, cls.restore

    def spied_attack(self):
        before = snapshot(self)
        attack(self)
        after = snapshot(self)
        log.append({"moved": any(not torch.equal(before[k], after[k]) for k in before), "before": before})

    def spied_restore(self):
        restore(self)
        now = snapshot(self)
        entry = log[-1]
        entry["restored"] = all(torch.equal(v, now[k]) for k, v in entry.pop("before").items())

    monkeypatch.setattr(cls, "attack", spied_attack)
    monkeypatch.setattr(cls, "restore", spied_restore)
    return log


REGULARIZERS = {
    "ema": {"ema_decay": 0.9},
    "swa": {"swa": True, "swa_start_epoch": 2, "swa_lr": 1e-3, "swa_anneal_steps": 2},
    "fgm": {"fgm_eps": 0.5, "fgm_start_epoch": 1},
    "awp": {"awp_eps": 0.01, "awp_lr": 0.5, "awp_start_epoch": 1},
}


@on_gpu
@pytest.mark.parametrize("name", sorted(REGULARIZERS))
def test_regularizer_trains_a_fold_on_cuda(name, backbone, monkeypatch):
    cfg = cfg_of(precision="auto", **REGULARIZERS[name])
    log = None
    if name == "fgm":
        log = spy(monkeypatch, FGM, lambda a: {"w": a.weight.detach().clone()})
    if name == "awp":
        log = spy(monkeypatch, AWP, lambda a: {n: p.detach().clone() for n, p in a.params})
    tokenizer, model = build_model(cfg, backbone, "test")
    ids, y = essays(tokenizer, cfg, 14)
    res = train_fold(model, cfg, ids[:10], y[:10], ids[10:], y[10:], tokenizer.pad_token_id, DEV)
    assert np.isfinite([h["train_loss"] for h in res.history]).all() and np.isfinite(res.valid_pred).all()
    assert all(p.device == DEV for p in res.model.parameters())
    if name in ("ema", "swa"):  # validation and the saved model use the average, not the last weights
        assert res.model is not model
        assert any(not torch.equal(a, b) for a, b in zip(res.model.parameters(), model.parameters()))
    else:  # every batch of both epochs: perturbed, then put back exactly
        assert len(log) == 2 * 3 and all(e["moved"] and e["restored"] for e in log), log
    pred, _ = predict(res.model, ids[10:], 8, tokenizer.pad_token_id, DEV, res.precision)
    np.testing.assert_allclose(pred, res.valid_pred, atol=1e-5 if res.precision == "fp32" else 1e-3)


@on_gpu
def test_gradient_checkpointing_recomputes_each_layer_and_gives_the_same_loss_and_grads(backbone):
    cfg = cfg_of()
    runs = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        tokenizer, model = build_model(cfg, backbone, "test")
        model.to(DEV).train()
        if checkpointing:
            enable_checkpointing(model.backbone)
        calls = []  # a layer's first block, hooked: recomputation runs it again, whichever way transformers wraps it
        hooks = [next(layer.children()).register_forward_pre_hook(lambda m, args, calls=calls: calls.append(1))
                 for layer in encoder_layers(model.backbone)]
        ids, y = essays(tokenizer, cfg, 6)
        batch = [t.to(DEV) for t in collate(ids, np.arange(6), tokenizer.pad_token_id)]
        torch.manual_seed(1)
        loss = loss_fn(cfg)(model(*batch)[0], torch.as_tensor(y, dtype=torch.float32, device=DEV))
        loss.backward()
        for h in hooks:
            h.remove()
        runs.append((loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}, len(calls)))
    (loss0, grads0, calls0), (loss1, grads1, calls1) = runs
    n_layers = model.backbone.config.num_hidden_layers
    assert calls0 == n_layers and calls1 == 2 * n_layers  # each layer runs again in backward
    torch.testing.assert_close(loss1, loss0)
    assert grads1.keys() == grads0.keys() and len(grads0) > 10
    for n, g in grads0.items():
        torch.testing.assert_close(grads1[n], g, rtol=1e-4, atol=1e-6, msg=lambda m, n=n: f"{n}: {m}")


# --- members fitted and scored on CUDA ------------------------------------------------------------------------------

def embeddings(name: str) -> np.ndarray:
    frame, _ = cache.read_member(name, "train", FB3)
    return frame[[c for c in frame.columns if c.startswith("emb_")]].to_numpy()


@on_gpu
@pytest.mark.parametrize("precision", ["fp32", "auto"])
def test_frozen_member_embeds_on_cuda_like_the_cpu(precision, project):
    params = load_params()
    run_folds(params)
    ref = fit_member("minilm", params, ["device=cpu", "precision=fp32"])
    cpu = embeddings("minilm")
    shutil.rmtree(paths.embedding_store("minilm"))  # kept by essay content: embed every essay again, on CUDA
    got = fit_member("minilm", params, [f"device={DEVICE}", f"precision={precision}"])
    assert got["embedded"] == ref["embedded"] == 43 and got["reused"] == 0
    assert got["precision"] in {runtime.precision(precision, DEV), "fp32"}  # auto keeps fp32 if half precision drifts
    gpu = embeddings("minilm")
    cos = (cpu * gpu).sum(1) / (np.linalg.norm(cpu, axis=1) * np.linalg.norm(gpu, axis=1))
    assert cos.min() > 0.999
    assert abs(got["mcrmse"] - ref["mcrmse"]) < (1e-4 if got["precision"] == "fp32" else 1e-2)


@on_gpu
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_fit_finetune_member_on_cuda_then_score_there(precision, tmp_path, tiny_deberta_dir, monkeypatch):
    """`stack fit base` on CUDA (tiny DeBERTa, gradient checkpointing): fp32 weights saved per fold, and scoring the
    saved member on CUDA reproduces its test predictions."""
    if precision == "fp16":
        fp16_only_on_cuda()
    root = make_project(tmp_path, tiny_deberta_dir, members=("base",))
    monkeypatch.chdir(root)
    params = load_params()
    run_folds(params)
    result = fit_member("base", params, [*FAST_FT, "max_len=256", f"device={DEVICE}", f"precision={precision}",
                                         "grad_checkpointing=true"])
    assert not result["pending"] and np.isfinite(result["cv"]["mcrmse"])
    assert {f["precision"] for f in result["folds"].values()} == {precision}
    for k in (0, 1):
        with safe_open(str(root / "models" / "base" / f"fold{k}" / "model.safetensors"), "pt") as f:
            dtypes = {str(f.get_slice(key).get_dtype()) for key in f.keys()}  # noqa: SIM118 (safe_open is no dict)
            assert dtypes == {"F32"}, dtypes
    test, _ = cache.read_member("base", "test", FB3)
    texts = pd.read_csv(root / "data" / "fb3" / "test.csv")["full_text"].tolist()
    preds, feats = load_scorer(root / "models" / "base").score(texts)
    np.testing.assert_allclose(preds, test[list(PRED_COLS)].to_numpy(), atol=2e-2)
    assert feats.shape == (len(texts), 32)


@on_gpu
def test_scorer_on_cuda_reproduces_the_cpu_scores(project, monkeypatch):
    """Members fitted on the CPU in fp32, then `Scorer` (what `stack predict` runs) on CUDA and on the CPU."""
    from typer.testing import CliRunner

    from stack.cli import app
    from stack.scorer import Scorer

    params = load_params()
    run_folds(params)
    fit_member("minilm", params, ["device=cpu"])
    fit_member("minilm-ft", params, [*FAST_FT, "device=cpu", "precision=fp32"])
    blended = CliRunner().invoke(app, ["blend", "--models", "minilm,minilm-ft", "--compare", ""])
    assert blended.exit_code == 0, blended.output
    essays_df = pd.read_csv("data/fb3/test.csv")
    if DEV.type == "cuda":
        torch.cuda.reset_peak_memory_stats(DEV)
    on_device = Scorer.from_project().score(essays_df)
    if DEV.type == "cuda":
        assert torch.cuda.max_memory_allocated(DEV) > 0  # the members ran there
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    on_cpu = Scorer.from_project().score(essays_df)
    pd.testing.assert_frame_equal(on_device, on_cpu, atol=1e-3, rtol=0)
    sub = pd.read_csv("submission.csv")
    np.testing.assert_allclose(on_device[list(TARGETS)].to_numpy(), sub[list(TARGETS)].to_numpy(), atol=1e-3)


# --- DDP ------------------------------------------------------------------------------------------------------------

@on_gpu
def test_ddp_trains_a_fold_on_an_nccl_group(backbone, monkeypatch):
    """One GPU cannot hold two nccl ranks: a one-rank group, with stack told the world has two, takes every distributed
    branch (process group, DDP wrapper with the device id, batch sharding, all_reduce of the loss, barrier)."""
    from torch.nn.parallel import DistributedDataParallel

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "LOCAL_RANK": "0",
                       "WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(dist, "world_size", lambda: 2)
    wrapped, wrap = [], dist.wrap
    monkeypatch.setattr(dist, "wrap", lambda m, d: wrapped.append(wrap(m, d)) or wrapped[-1])
    dist.setup(DEV)
    try:
        assert torch.distributed.get_backend() == ("nccl" if DEV.type == "cuda" else "gloo")
        cfg = cfg_of(epochs=1, batch_size=2, precision="auto")
        tokenizer, model = build_model(cfg, backbone, "test")
        ids, y = essays(tokenizer, cfg, 12)
        start = weights(model)
        res = train_fold(model, cfg, ids[:8], y[:8], ids[8:], y[8:], tokenizer.pad_token_id, DEV)
        assert isinstance(wrapped[0], DistributedDataParallel)
        assert wrapped[0].device_ids == ([DEV.index] if DEV.type == "cuda" else None)
        assert np.isfinite(res.valid_pred).all() and np.isfinite(res.history[0]["train_loss"])
        assert any(not torch.equal(p, start[n].to(p.device)) for n, p in model.named_parameters())
        dist.barrier()
    finally:
        torch.distributed.destroy_process_group()
