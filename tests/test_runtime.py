"""CPU run-time settings: the CPU attention matches sdpa and dispatches by length; heap_reuse changes glibc's
behaviour while active and restores it."""

import ctypes
import ctypes.util
import os
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stack.backbones import attention
from stack.backbones.attention import cpu_attention, use_cpu_attention
from stack.runtime import heap_reuse

MODULE = torch.nn.Module().eval()


def _qkv(dtype, b=3, h=2, t=7, d=8):
    torch.manual_seed(0)
    return [torch.randn(b, h, t, d).to(dtype) for _ in range(3)]


def _mask(b=3, t=7):
    keep = torch.ones(b, t, dtype=torch.bool)
    keep[1, 5:] = False  # row 1: two padded keys
    keep[2, 1:] = False  # row 2: only its first token
    return keep[:, None, None, :].expand(b, 1, t, t)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("onednn", [False, True])
def test_cpu_attention_matches_sdpa(dtype, tol, masked, onednn, monkeypatch):
    if onednn and not torch.backends.mkldnn.is_available():
        pytest.skip("this PyTorch has no oneDNN")
    monkeypatch.setattr(attention, "ONEDNN_SOFTMAX", onednn)
    q, k, v = _qkv(dtype)
    mask = _mask() if masked else None
    with torch.inference_mode():
        got, weights = cpu_attention(MODULE, q, k, v, mask, scaling=0.3)
        ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, scale=0.3)
    assert weights is None and got.shape == (3, 7, 2, 8) and got.dtype == dtype
    torch.testing.assert_close(got.float(), ref.transpose(1, 2), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 8e-3)])
def test_softmax_matches_torch_with_masked_entries(dtype, tol):
    torch.manual_seed(0)
    scores = (torch.randn(2, 3, 5, 6) * 4).to(dtype)
    scores[0, :, :, 4:] = torch.finfo(dtype).min  # padded keys, as cpu_attention masks them
    scores[1, 2, 3, :-1] = torch.finfo(dtype).min  # a row with one key left
    got = attention.softmax(scores)
    assert got.dtype == dtype and got.layout == torch.strided
    assert (got[0, :, :, 4:] == 0).all() and (got[1, 2, 3, -1] == 1).all()
    torch.testing.assert_close(got.float(), torch.softmax(scores.float(), -1), rtol=tol, atol=tol)
    torch.testing.assert_close(attention.softmax(scores.transpose(-1, -2)).float(),  # not contiguous: torch's own
                               torch.softmax(scores.transpose(-1, -2).float(), -1), rtol=tol, atol=tol)


def test_cpu_attention_takes_an_additive_float_mask():
    q, k, v = _qkv(torch.float32)
    keep = _mask()
    additive = torch.zeros(keep.shape).masked_fill(~keep, torch.finfo(torch.float32).min)
    with torch.inference_mode():
        got, _ = cpu_attention(MODULE, q, k, v, additive)
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
    torch.testing.assert_close(got, ref.transpose(1, 2), rtol=1e-5, atol=1e-5)


def test_cpu_attention_hands_long_sequences_and_training_to_sdpa(monkeypatch):
    calls = []
    import transformers.integrations.sdpa_attention as sdpa

    real = sdpa.sdpa_attention_forward
    monkeypatch.setattr(sdpa, "sdpa_attention_forward", lambda *a, **k: calls.append(a[1].shape[-2]) or real(*a, **k))
    q, k, v = _qkv(torch.float32, t=9)
    with torch.inference_mode():
        cpu_attention(MODULE, q, k, v, None)  # 9 <= SHORT: the whole-batch path
        assert calls == []
        monkeypatch.setattr(attention, "SHORT", 8)
        cpu_attention(MODULE, q, k, v, None)
    assert calls == [9]
    cpu_attention(MODULE, q, k, v, None)  # autograd on: sdpa
    assert calls == [9, 9]
    monkeypatch.setattr(attention, "SHORT", 128)
    with torch.inference_mode():
        cpu_attention(MODULE, q, k, v, None, is_causal=True)  # a decoder's causal attention
        causal = torch.nn.Module().eval()
        causal.is_causal = True
        cpu_attention(causal, q, k, v, None)
        cpu_attention(MODULE, q, k[:, :1], v[:, :1], None)  # grouped-query: fewer key/value heads
    assert calls == [9, 9, 9, 9, 9]


def test_use_cpu_attention_keeps_a_bert_output(tiny_bert_dir):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(tiny_bert_dir).eval()
    ids = torch.randint(5, 1000, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 8:] = 0
    with torch.inference_mode():
        ref = model(input_ids=ids, attention_mask=mask).last_hidden_state
        assert use_cpu_attention(model) and model.config._attn_implementation == attention.NAME
        got = model(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(got[mask.bool()], ref[mask.bool()], rtol=1e-5, atol=1e-5)


def test_use_cpu_attention_leaves_other_architectures_alone(tiny_deberta_dir):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(tiny_deberta_dir)
    before = model.config._attn_implementation
    assert not use_cpu_attention(model)
    assert model.config._attn_implementation == before


def _mallinfo2():
    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                     "keepcost")]

    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    if not hasattr(libc, "mallinfo2"):
        pytest.skip("not glibc >= 2.33")
    libc.mallinfo2.restype = MallInfo2
    return libc.mallinfo2()


def _mmapped_during(size: int) -> int:
    """Bytes glibc holds in mmapped blocks while a ``size``-byte array is alive."""
    block = np.ones(size, np.uint8)
    during = _mallinfo2().hblkhd
    del block
    return during


glibc_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")


@glibc_only
def test_heap_reuse_serves_big_blocks_from_the_heap_and_keeps_them(monkeypatch):
    for key in [k for k in os.environ if k.startswith("MALLOC_")] + ["GLIBC_TUNABLES"]:
        monkeypatch.delenv(key, raising=False)
    size = 64 * 2**20
    base = _mallinfo2().hblkhd
    assert _mmapped_during(size) - base >= size  # glibc: a 64 MiB block is its own mmap
    with heap_reuse() as applied:
        assert applied
        with heap_reuse() as nested:
            assert nested
        assert _mmapped_during(size) - base < size  # from the heap, also after the nested exit ...
        assert _mallinfo2().arena >= size  # ... which keeps it after free, for the next batch
    assert _mmapped_during(size) - base >= size  # mmap again above 32 MiB


@glibc_only
def test_after_heap_reuse_glibc_still_reuses_mid_sized_blocks(monkeypatch):
    """Setting any malloc option ends glibc's adaptive mmap threshold; leaving it at the initial 128 KiB would
    mmap (and page-fault) every block above that for the rest of the process."""
    for key in [k for k in os.environ if k.startswith("MALLOC_")] + ["GLIBC_TUNABLES"]:
        monkeypatch.delenv(key, raising=False)
    with heap_reuse():
        pass
    size = 4 * 2**20
    _mmapped_during(size)
    base = _mallinfo2().hblkhd
    assert _mmapped_during(size) - base < size
    assert _mmapped_during(size) - base < size


def test_heap_reuse_leaves_a_user_tuned_malloc_alone(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    with heap_reuse() as applied:
        assert applied is False


def test_heap_reuse_is_a_no_op_without_glibc(monkeypatch):
    from stack import runtime

    monkeypatch.setattr(runtime, "_glibc", lambda: None)
    with heap_reuse() as applied:
        assert applied is False
