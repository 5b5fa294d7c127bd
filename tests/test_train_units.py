"""Unit tests of the fine-tuning parts: the finetune member's config, batching, LLRD groups, freezing,
EMA/FGM/AWP, losses, distributed bookkeeping. (Poolings, the Pooler included, are tested in test_pooling.py.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from stack.backbones.pooling import PoolingSpec
from stack.config import build
from stack.errors import StackError
from stack.members.registry import load_member
from stack.train.batching import collate, eval_batches, prepare_texts, train_batches
from stack.train.config import TrainConfig, validate

ROOT = Path(__file__).resolve().parents[1]


def cfg_of(**kw) -> TrainConfig:
    return validate(build(TrainConfig, kw, "test"), "test")


@pytest.fixture
def member_dir(tmp_path, monkeypatch):
    """cwd with configs/members/a.yaml (a finetune member on configs/backbones/bb.yaml) and a frozen member f."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs" / "members").mkdir(parents=True)
    (tmp_path / "configs" / "backbones").mkdir(parents=True)
    (tmp_path / "configs" / "backbones" / "bb.yaml").write_text("path: /somewhere/bb\nmax_positions: 512\n")
    (tmp_path / "configs" / "members" / "a.yaml").write_text("kind: finetune\nbackbone: bb\nepochs: 1\n")
    (tmp_path / "configs" / "members" / "f.yaml").write_text("kind: frozen\nbackbone: bb\n")
    return tmp_path


# --- config ---------------------------------------------------------------------------------------------------

def test_every_shipped_finetune_member_loads(monkeypatch):
    import yaml

    monkeypatch.chdir(ROOT)
    names = sorted(p.stem for p in (ROOT / "configs" / "members").glob("*.yaml")
                   if yaml.safe_load(p.read_text()).get("kind") == "finetune")
    assert {"minilm-ft", "xsmall", "small", "base", "large", "v2-xlarge"} <= set(names)
    backbones = {p.stem for p in (ROOT / "configs" / "backbones").glob("*.yaml")}
    for n in names:
        spec = load_member(n)
        assert isinstance(spec.cfg, TrainConfig) and spec.cfg.name == n and spec.kind.name == "finetune"
        assert spec.backbone.name in backbones  # a file under configs/backbones/
        assert spec.where == f"configs/members/{n}.yaml"
        PoolingSpec(spec.cfg.pooling, spec.cfg.layers, spec.cfg.layer_mode, spec.cfg.layer_weights).check(True)


@pytest.mark.parametrize("raw, msg", [
    ({"lrr": 1.0}, "unknown key 'lrr'"),
    ({"amp": "bf16"}, r"key 'amp' is now 'precision' \(auto \| bf16 \| fp16 \| fp32\)"),
    ({"precision": "fp8"}, "precision 'fp8' is not one of auto, bf16, fp16, fp32"),
    ({"loss": "huber"}, "loss 'huber' is not one of smooth_l1, mse, rmse"),
    ({"target_weights": [1, -1]}, "target_weights needs non-negative numbers with a positive sum"),
    ({"msd_samples": 4}, "needs head_dropout > 0"),
    ({"swa": True, "ema_decay": 0.99}, "turn one off"),
    ({"epochs": "4"}, "expected int"),
    ({"pooling": ["concat_last4"]}, r"test: unknown pooling 'concat_last4'.*`layers: \[-4, -3, -2, -1\]`"),
    ({"layer_mode": "sum"}, "test: unknown layer_mode 'sum'"),
])
def test_config_rejects_mistakes(raw, msg):
    with pytest.raises(StackError, match=msg):
        cfg_of(**raw)


def test_unknown_member_lists_known_and_overrides_apply(member_dir):
    with pytest.raises(StackError, match=r"unknown member 'b': no configs/members/b.yaml \(known members: a, f\)"):
        load_member("b")
    assert load_member("a", ["lr=0.001"]).cfg.lr == 0.001
    assert load_member("a", ["backbone.path=/elsewhere"]).backbone.path == "/elsewhere"
    with pytest.raises(StackError, match="configs/members/a.yaml: key 'amp' is now 'precision'"):
        load_member("a", ["amp=fp32"])


def test_old_train_configs_point_to_the_new_layout(member_dir):
    (member_dir / "configs" / "train").mkdir()
    (member_dir / "configs" / "train" / "old.yaml").write_text("backbone: minilm\nepochs: 1\n")
    with pytest.raises(StackError, match="configs/train/old.yaml uses the old layout: fine-tuned members now live "
                                         "in configs/members/"):
        load_member("old")


def test_backbone_must_be_a_known_backbone(member_dir):
    (member_dir / "configs" / "members" / "nope.yaml").write_text("kind: finetune\nbackbone: nope\n")
    with pytest.raises(StackError, match=r"configs/members/nope.yaml: unknown backbone 'nope': no "
                                         r"configs/backbones/nope.yaml \(known backbones: bb\)"):
        load_member("nope")
    (member_dir / "configs" / "members" / "none.yaml").write_text("kind: finetune\nepochs: 1\n")
    with pytest.raises(StackError, match="configs/members/none.yaml: no `backbone` key"):
        load_member("none")
    with pytest.raises(StackError, match="max_len 1024 exceeds the 512 positions of backbone 'bb'"):
        load_member("a", ["max_len=1024"])


def test_fingerprint_ignores_run_only_keys(member_dir):
    fp = load_member("a").fingerprint()
    assert load_member("a", ["folds=[0]", "threads=1", "dvclive=false", "eval_batch_size=3"]).fingerprint() == fp
    assert load_member("a", ["lr=0.0001"]).fingerprint() != fp
    assert load_member("a", ["backbone.path=/elsewhere"]).fingerprint() != fp  # other weights, other outputs
    assert load_member("a", ["layers=[-2, -1]", "layer_mode=weighted"]).fingerprint() != fp


# --- batching --------------------------------------------------------------------------------------------------

def test_paragraph_modes():
    text = "First para.\n\nSecond  para.\r\n \nThird."
    assert prepare_texts([text], "keep") == [text]
    assert prepare_texts([text], "strip") == ["First para. Second  para. Third."]
    assert prepare_texts([text], "token", "[BR]") == ["First para. [BR] Second  para. [BR] Third."]


def test_bucketed_batches_cover_everything_once_and_group_lengths():
    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 500, size=103)
    batches = train_batches(lengths, 8, 4, rng)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(103))
    spread_bucketed = np.mean([np.ptp(lengths[b]) for b in batches])
    plain = train_batches(lengths, 8, 0, np.random.default_rng(0))
    assert spread_bucketed < 0.5 * np.mean([np.ptp(lengths[b]) for b in plain])
    ev = eval_batches(lengths, 10)
    assert lengths[ev[0]].min() >= lengths[ev[1]].max()


def test_collate_pads_to_the_longest_in_batch():
    ids, mask = collate([[1, 2, 3], [4], [5, 6]], [1, 2], pad_id=0)
    assert ids.tolist() == [[4, 0], [5, 6]] and mask.tolist() == [[1, 0], [1, 1]]


# --- optimiser ----------------------------------------------------------------------------------------------------

@pytest.fixture
def tiny_regressor(tiny_deberta_dir):
    from transformers import AutoModel

    from stack.train.model import Regressor

    torch.manual_seed(0)
    # learned weights over every hidden state: the old `weighted_layer` pooling
    return Regressor(AutoModel.from_pretrained(tiny_deberta_dir), PoolingSpec(("mean",), (), "weighted"))


def test_llrd_groups_and_no_decay(tiny_regressor):
    from stack.train.optim import param_groups

    cfg = cfg_of(lr=1e-3, llrd=0.5, head_lr=1e-2, weight_decay=0.1)
    groups = {g["name"]: g for g in param_groups(tiny_regressor, cfg)}
    assert groups["head"]["lr"] == 1e-2 and groups["head/no_decay"]["weight_decay"] == 0.0
    assert any(p is tiny_regressor.pool.logits for p in groups["head/no_decay"]["params"])  # learned layer weights
    assert groups["depth0"]["lr"] == pytest.approx(1e-3)  # top layer
    assert groups["depth1"]["lr"] == pytest.approx(5e-4)
    assert groups["depth2"]["lr"] == pytest.approx(2.5e-4)  # embeddings, 2 layers below the top
    names = {id(p): n for n, p in tiny_regressor.named_parameters()}
    for g in groups.values():
        for p in g["params"]:
            is_nd = names[id(p)].endswith("bias") or "LayerNorm" in names[id(p)] or p.ndim < 2
            assert (g["weight_decay"] == 0.0) == is_nd, names[id(p)]
    n_params = sum(len(g["params"]) for g in groups.values())
    assert n_params == len(list(tiny_regressor.parameters()))


def test_freeze_and_reinit(tiny_regressor):
    from stack.train.optim import param_groups, prepare_backbone

    before = {n: p.detach().clone() for n, p in tiny_regressor.named_parameters()}
    prepare_backbone(tiny_regressor, cfg_of(freeze_embeddings=True, freeze_layers=1, reinit_layers=1))
    for n, p in tiny_regressor.named_parameters():
        frozen = n.startswith("backbone.embeddings") or n.startswith("backbone.encoder.layer.0.")
        assert p.requires_grad != frozen, n
        if n.startswith("backbone.encoder.layer.1.") and n.endswith("dense.weight"):
            assert not torch.equal(p, before[n]), n  # re-initialised
        if frozen:
            assert torch.equal(p, before[n])
    grouped = {id(p) for g in param_groups(tiny_regressor, cfg_of()) for p in g["params"]}
    assert all(p.requires_grad for p in tiny_regressor.parameters() if id(p) in grouped)
    with pytest.raises(StackError, match="exceed the backbone's 2 layers"):
        prepare_backbone(tiny_regressor, cfg_of(freeze_layers=2, reinit_layers=1))


# --- regularisers and losses -----------------------------------------------------------------------------------------

def test_ema_is_the_exponential_average():
    from stack.train.regularizers import EMA

    m = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(1.0)
    ema = EMA(m, decay=0.5)
    ema.step(m, 1)  # first update copies
    with torch.no_grad():
        m.weight.fill_(3.0)
    ema.step(m, 1)
    assert ema.module.weight.item() == pytest.approx(2.0)


def test_swa_anneals_every_group_keeping_llrd_ratios(tiny_regressor):
    from stack.train.optim import make_optimizer, make_scheduler
    from stack.train.regularizers import SWA

    cfg = cfg_of(lr=1e-3, llrd=0.5, head_lr=1e-2)
    opt = make_optimizer(tiny_regressor, cfg)
    make_scheduler(opt, cfg, 100)
    opt.step()  # (no gradients: a no-op) schedulers expect a step before theirs
    swa = SWA(tiny_regressor, opt, start_epoch=2, swa_lr=1e-4, anneal_steps=3, strategy="linear")
    assert not swa.step(tiny_regressor, 1) and not swa.active
    for _ in range(5):
        assert swa.step(tiny_regressor, 2)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["depth0"] == pytest.approx(1e-4) and lrs["depth1"] == pytest.approx(5e-5)
    assert lrs["head"] == pytest.approx(1e-3)
    assert swa.averaged.n_averaged.item() == 5


def test_fgm_and_awp_perturb_then_restore_exactly(tiny_regressor):
    from stack.train.regularizers import AWP, FGM

    ids = torch.randint(1000, 2000, (2, 7))
    pred, _ = tiny_regressor(ids, torch.ones_like(ids))
    pred.sum().backward()
    before = {n: p.detach().clone() for n, p in tiny_regressor.named_parameters()}
    for attack in (FGM(tiny_regressor, eps=0.5), AWP(tiny_regressor, eps=0.01, lr=1.0)):
        attack.attack()
        moved = [n for n, p in tiny_regressor.named_parameters() if not torch.equal(p, before[n])]
        assert moved
        for n, p in tiny_regressor.named_parameters():  # AWP stays within eps * |w|
            if isinstance(attack, AWP):
                assert torch.all((p - before[n]).abs() <= 0.01 * before[n].abs() + 1e-7)
        attack.restore()
        assert all(torch.equal(p, before[n]) for n, p in tiny_regressor.named_parameters())


def test_target_weights_and_the_head_follow_the_task(tiny_deberta_dir):
    from transformers import AutoModel

    from stack.task import build_task
    from stack.train.config import check_targets
    from stack.train.model import Regressor

    task = build_task({"targets": {"content": {"min": -2, "max": 4, "step": None},
                                   "wording": {"min": 0, "max": 10, "step": 1}}})
    check_targets(cfg_of(), task, "m.yaml")  # [] = equal weights, for any number of targets
    check_targets(cfg_of(target_weights=[2, 1]), task, "m.yaml")
    with pytest.raises(StackError, match=r"m.yaml: target_weights has 6 numbers, the task has 2 targets \(content, "
                                         r"wording\); give one per target or \[\]"):
        check_targets(cfg_of(target_weights=[1] * 6), task, "m.yaml")
    model = Regressor(AutoModel.from_pretrained(tiny_deberta_dir), PoolingSpec(), n_out=task.k, bias=task.centre)
    assert model.head.out_features == 2 and model.head.bias.tolist() == [1.0, 5.0]  # the middle of each range
    fb3 = Regressor(AutoModel.from_pretrained(tiny_deberta_dir), PoolingSpec())
    assert fb3.head.out_features == 6 and fb3.head.bias.tolist() == [3.0] * 6


@pytest.mark.parametrize("loss", ["smooth_l1", "mse", "rmse"])
def test_losses_and_target_weights(loss):
    from stack.train.loop import loss_fn

    pred, y = torch.zeros(4, 6), torch.zeros(4, 6)
    y[:, 0] = 2.0  # error only on the first target
    only_first = loss_fn(cfg_of(loss=loss, target_weights=[1, 0, 0, 0, 0, 0]))(pred, y).item()
    none_first = loss_fn(cfg_of(loss=loss, target_weights=[0, 1, 1, 1, 1, 1]))(pred, y).item()
    expected = {"smooth_l1": 1.5, "mse": 4.0, "rmse": 2.0}[loss]
    assert only_first == pytest.approx(expected, rel=1e-4) and none_first == pytest.approx(0.0, abs=1e-3)
    equal = loss_fn(cfg_of(loss=loss))(pred[:, :2], y[:, :2]).item()  # no weights: equal, for any width
    assert equal == pytest.approx(expected / 2, rel=1e-4)


# --- distributed bookkeeping -------------------------------------------------------------------------------------------

def test_dist_shards_batches_evenly_and_only_rank0_writes(monkeypatch):
    from stack import runtime
    from stack.train import dist

    for key in ("RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    batches = list(range(7))
    assert dist.this_rank(batches) == batches and dist.is_main()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    shares = []
    for r in (0, 1):
        monkeypatch.setenv("RANK", str(r))
        shares.append(dist.this_rank(batches))
    assert shares == [[0, 2, 4], [1, 3, 5]]  # same count per rank, no batch twice
    assert not dist.is_main() and runtime.threads(0) >= 1 and runtime.threads(3) == 3
