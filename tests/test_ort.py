"""ONNX Runtime for frozen encoders in fp32 on the CPU (stack.backbones.ort, stack.runtime.engine): the same
embeddings as PyTorch's, exported once per weights and depth into the cache folder and cut after the deepest state
read, and PyTorch again, after one line, wherever an export or its check fails."""

import numpy as np
import pytest
import torch

from stack import runtime
from stack.backbones import ort
from stack.backbones.embedder import embed_texts
from stack.errors import StackError
from stack.members.frozen import FrozenConfig

CPU = torch.device("cpu")
TEXTS = ["Dogs is good pet because they loyal. " * 6, "I like school. It is fun. My teacher are nice.", "Short."]


@pytest.fixture
def tiny(tiny_bert_dir, tmp_path, monkeypatch):
    from transformers import AutoModel, AutoTokenizer

    monkeypatch.setenv("STACK_ONNX_CACHE", str(tmp_path / "onnx"))
    return AutoTokenizer.from_pretrained(tiny_bert_dir), AutoModel.from_pretrained(tiny_bert_dir).eval()


def _cfg(**kw):
    base = dict(name="t", max_len=24, stride=6, layers=(1,), precision="fp32", device="cpu", batch_size=2)
    return FrozenConfig(**{**base, **kw})


def test_onnx_runtime_embeds_what_pytorch_embeds_exported_once_and_cut_at_the_deepest_state(tiny, tmp_path,
                                                                                            monkeypatch):
    tok, model = tiny
    ref, prec = embed_texts(TEXTS, tok, model, _cfg(engine="torch"))
    exports = []
    real = ort.export
    monkeypatch.setattr(ort, "export", lambda *a: exports.append(a[1]) or real(*a))
    got, prec_onnx = embed_texts(TEXTS, tok, model, _cfg(engine="auto"))  # auto: onnx for fp32 on the CPU
    assert prec == prec_onnx == "fp32" and exports == [1]  # cut after state 1: one block of two
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    files = list((tmp_path / "onnx").glob("*.onnx"))
    assert len(files) == 1 and not list((tmp_path / "onnx").glob(".*.tmp"))
    again, _ = embed_texts(TEXTS, tok, model, _cfg(engine="onnx"))
    assert exports == [1]  # the cached graph, not a second export
    np.testing.assert_array_equal(again, got)
    embed_texts(TEXTS, tok, model, _cfg(engine="onnx", layers=()))  # every state: another depth, another graph
    assert exports == [1, 2] and len(list((tmp_path / "onnx").glob("*.onnx"))) == 2


def test_the_exported_graph_runs_only_the_blocks_it_needs(tiny):
    _, model = tiny
    enc = ort.encoder(model, 1, 1, "t", lambda e: True)
    ids = torch.randint(5, 1000, (3, 7))
    out = enc(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True)
    with torch.inference_mode():
        full = model(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True).hidden_states
    assert len(out.hidden_states) == 2  # embeddings + one block
    for a, b in zip(out.hidden_states, full):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_a_failed_export_or_check_leaves_the_member_on_pytorch_after_one_line(tiny, monkeypatch, capsys):
    tok, model = tiny
    ref, _ = embed_texts(TEXTS, tok, model, _cfg(engine="torch"))

    def broken(*a):
        raise RuntimeError("Exporting the operator 'aten::frobnicate' to ONNX opset version 17 is not supported.\n"
                           "more detail")

    monkeypatch.setattr(ort, "export", broken)
    got, _ = embed_texts(TEXTS, tok, model, _cfg(engine="onnx"), "t")
    np.testing.assert_array_equal(got, ref)  # PyTorch's own numbers
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["t: could not run this encoder with ONNX Runtime (RuntimeError: Exporting the operator "
                   "'aten::frobnicate' to ONNX opset version 17 is not supported.); running PyTorch"]
    monkeypatch.undo()
    assert ort.encoder(model, 1, 1, "t", lambda enc: False) is None  # a sample that does not match
    assert "differ from PyTorch's" in capsys.readouterr().err


def test_onnx_is_needed_only_to_export_and_a_missing_package_is_one_line(tiny, monkeypatch, capsys):
    import sys

    _, model = tiny
    assert ort.encoder(model, 1, 1, "t", lambda enc: True) is not None  # exported: the graph is cached
    monkeypatch.setitem(sys.modules, "onnx", None)  # an import of onnx now fails
    assert ort.encoder(model, 1, 1, "t", lambda enc: True) is not None  # a cached graph does not need it
    assert ort.encoder(model, 2, 1, "t", lambda enc: True) is None  # another depth must be exported: it does
    assert capsys.readouterr().err.strip().splitlines() == [
        "t: engine onnx needs the onnx and onnxruntime packages (onnx is missing); running PyTorch"]


def test_engine_is_chosen_in_one_place_and_a_bad_one_is_one_line(tiny):
    assert runtime.engine("auto", CPU, "fp32") == "onnx"
    assert runtime.engine("auto", CPU, "bf16") == runtime.engine("torch", CPU, "fp32") == "torch"
    assert runtime.engine("auto", torch.device("cuda"), "fp32") == "torch"
    with pytest.raises(StackError, match=r"^t.yaml: engine 'ort' is not one of auto, torch, onnx$"):
        runtime.engine("ort", CPU, "fp32", "t.yaml")
    with pytest.raises(StackError, match="engine onnx runs fp32 on the CPU, not bf16 on cpu; set precision: fp32"):
        runtime.engine("onnx", CPU, "bf16", "t.yaml")
    tok, model = tiny
    with pytest.raises(StackError, match="engine 'ort' is not one of"):  # refused before anything embeds
        embed_texts(TEXTS, tok, model, _cfg(engine="ort"))
