"""CPU run-time settings: the CPU attention matches sdpa and dispatches by length; heap_reuse changes glibc's
behaviour while active and restores it."""

import ctypes
import ctypes.util
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
def test_cpu_attention_matches_sdpa(dtype, tol, masked):
    q, k, v = _qkv(dtype)
    mask = _mask() if masked else None
    with torch.inference_mode():
        got, weights = cpu_attention(MODULE, q, k, v, mask, scaling=0.3)
        ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, scale=0.3)
    assert weights is None and got.shape == (3, 7, 2, 8) and got.dtype == dtype
    torch.testing.assert_close(got.float(), ref.transpose(1, 2), rtol=tol, atol=tol)


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


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_heap_reuse_serves_big_blocks_from_the_heap_and_keeps_them():
    size = 64 * 2**20

    def mmapped_and_heap_after_free():
        block = np.ones(size, np.uint8)
        during = _mallinfo2().hblkhd
        del block
        return during, _mallinfo2().arena

    base = _mallinfo2().hblkhd
    during, _ = mmapped_and_heap_after_free()
    assert during - base >= size  # default glibc: a 64 MiB block is its own mmap
    with heap_reuse() as applied:
        assert applied
        during, arena = mmapped_and_heap_after_free()
        assert during - base < size  # from the heap ...
        assert arena >= size  # ... which keeps it after free, for the next batch
    during, _ = mmapped_and_heap_after_free()
    assert during - base >= size  # defaults restored


def test_heap_reuse_is_a_no_op_without_glibc(monkeypatch):
    from stack import runtime

    monkeypatch.setattr(runtime, "_glibc", lambda: None)
    with heap_reuse() as applied:
        assert applied is False
