"""Packed linear layers compute what nn.Linear (and nn.Linear + exact GELU) compute; pack_linears swaps exactly
the layers it can and leaves the rest alone."""

import pytest
import torch

from stack.backbones import packed
from stack.backbones.packed import PackedLinear, pack_linears

pytestmark = pytest.mark.skipif(not packed.packable(torch.float32), reason="PyTorch built without oneDNN")


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("gelu", [False, True])
def test_packed_linear_matches_nn_linear(dtype, tol, bias, gelu):
    if not packed.packable(dtype):
        pytest.skip(f"no oneDNN {dtype} on this CPU")
    torch.manual_seed(0)
    lin = torch.nn.Linear(16, 24, bias=bias).to(dtype)
    x = torch.randn(3, 5, 16).to(dtype)  # any leading shape
    with torch.inference_mode():
        ref = lin(x).float()
        ref = torch.nn.functional.gelu(ref) if gelu else ref
        got = PackedLinear(lin, rows=15, gelu=gelu)(x)
    assert got.shape == (3, 5, 24) and got.dtype == dtype
    torch.testing.assert_close(got.float(), ref, rtol=tol, atol=tol)


def test_pack_linears_keeps_a_bert_output_and_fuses_its_gelu(tiny_bert_dir):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(tiny_bert_dir).eval()
    ids = torch.randint(5, 1000, (2, 9))
    with torch.inference_mode():
        ref = model(input_ids=ids, output_hidden_states=True).hidden_states
        n = pack_linears(model, rows=18)
        got = model(input_ids=ids, output_hidden_states=True).hidden_states
    assert n == 2 * 6 + 1  # per layer q, k, v, attention output, up, down; and the pooler
    assert not any(type(m) is torch.nn.Linear for m in model.modules())
    block = model.encoder.layer[0].intermediate
    assert block.dense.post[0] == "gelu" and isinstance(block.intermediate_act_fn, torch.nn.Identity)
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_pack_linears_fuses_only_exact_gelu():
    block = torch.nn.Module()
    block.dense, block.intermediate_act_fn = torch.nn.Linear(4, 8), torch.nn.GELU(approximate="tanh")
    assert pack_linears(block, rows=4) == 1
    assert block.dense.post[0] == "none" and isinstance(block.intermediate_act_fn, torch.nn.GELU)


def test_pack_linears_changes_nothing_without_onednn(monkeypatch):
    monkeypatch.setattr(packed, "packable", lambda dtype: False)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    assert pack_linears(model, rows=8) == 0
    assert [type(m) for m in model] == [torch.nn.Linear, torch.nn.ReLU, torch.nn.Linear]
