"""Run-time decisions (stack.runtime): device and precision (one rule for every kind, errors naming the config
file), threads and ranks; the CPU attention matches sdpa and dispatches by length; heap_reuse changes glibc's
behaviour while active and restores it."""

import ctypes
import ctypes.util
import os
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stack import runtime
from stack.backbones import attention
from stack.backbones.attention import cpu_attention, use_cpu_attention
from stack.errors import StackError
from stack.runtime import heap_reuse

WHERE = "configs/members/x.yaml"
CPU = torch.device("cpu")
CUDA0 = torch.device("cuda", 0)  # a device object only: nothing runs on it


# --- device ---------------------------------------------------------------------------------------------------

def _cuda(monkeypatch, visible: int) -> list:
    """Pretend ``visible`` CUDA devices are visible; -> the devices made current since (torch.cuda.set_device)."""
    current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: visible > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    return current


def test_device_auto_is_the_cpu_without_cuda_and_this_ranks_gpu_with_it(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    _cuda(monkeypatch, 0)
    assert runtime.device("auto") == runtime.device("cpu", WHERE) == CPU
    current = _cuda(monkeypatch, 2)
    assert runtime.device("auto") == CUDA0 and runtime.device("cpu") == CPU
    monkeypatch.setenv("LOCAL_RANK", "1")  # torchrun's second process on this machine
    assert runtime.device("auto") == runtime.device("cuda") == torch.device("cuda", 1)
    assert runtime.device("cuda:0") == CUDA0
    # the chosen device is made current, so this rank's checks and nccl collectives run on its own GPU
    assert current == [CUDA0, torch.device("cuda", 1), torch.device("cuda", 1), CUDA0]


@pytest.mark.parametrize("visible, requested, match", [
    (0, "cuda", "device 'cuda', but no CUDA devices are visible; set `device: auto`"),
    (0, "cuda:0", "device 'cuda:0', but no CUDA devices are visible"),
    (1, "cuda:1", "device 'cuda:1', but 1 CUDA device is visible"),
    (2, "cuda:5", "device 'cuda:5', but 2 CUDA devices are visible"),
    (1, "gpu", "device 'gpu' is not one of auto, cpu, cuda, cuda:<k>"),
    (1, "cuda:x", "device 'cuda:x' is not one of auto, cpu, cuda, cuda:<k>"),
])
def test_device_not_visible_or_unknown_is_an_error_naming_the_file(monkeypatch, visible, requested, match):
    _cuda(monkeypatch, visible)
    with pytest.raises(StackError, match=f"^{WHERE}: {match}"):
        runtime.device(requested, WHERE)


# --- precision ------------------------------------------------------------------------------------------------

def test_auto_precision_on_the_cpu_is_bf16_iff_native_else_fp32(monkeypatch):
    native = runtime.native_bf16(CPU)
    assert runtime.precision("auto", CPU, WHERE) == ("bf16" if native else "fp32")  # this machine's answer
    for has, want in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(runtime, "native_bf16", lambda dev, has=has: has)
        assert runtime.precision("auto", CPU, WHERE) == want


def test_auto_precision_on_cuda_is_bf16_where_native_else_fp16(monkeypatch):
    for has, want in ((True, "bf16"), (False, "fp16")):
        monkeypatch.setattr(runtime, "native_bf16", lambda dev, has=has: has)
        assert runtime.precision("auto", CUDA0, WHERE) == want
    assert runtime.precision("fp16", CUDA0) == "fp16"


@pytest.mark.parametrize("prec", ["bf16", "fp32"])
def test_explicit_precision_is_kept(prec, monkeypatch):
    monkeypatch.setattr(runtime, "native_bf16", lambda dev: True)
    assert runtime.precision(prec, CPU, WHERE) == prec


def test_explicit_bf16_without_native_bf16_runs_emulated_after_one_warning(monkeypatch, recwarn):
    """A config written on an AMX machine still runs on an AVX2 laptop: emulated, said once per config file."""
    monkeypatch.setattr(runtime, "native_bf16", lambda dev: False)
    monkeypatch.setattr(runtime, "_warned", set())
    for _ in range(3):
        assert runtime.precision("bf16", CPU, WHERE) == "bf16"
    assert runtime.precision("fp32", CPU, WHERE) == runtime.precision("auto", CPU, WHERE) == "fp32"
    assert runtime.precision("bf16", CPU, "configs/members/y.yaml") == "bf16"
    said = [str(w.message) for w in recwarn]
    assert len(said) == 2 and said[0].startswith(f"{WHERE}: bf16 on a CPU without native bf16")
    assert "several times slower than fp32; set precision: auto" in said[0] and "\n" not in said[0]
    assert said[1].startswith("configs/members/y.yaml: ")


def test_fp16_on_the_cpu_and_unknown_words_are_errors_naming_the_file():
    with pytest.raises(StackError, match=f"^{WHERE}: precision fp16 needs a CUDA device; use bf16 or auto"):
        runtime.precision("fp16", CPU, WHERE)
    with pytest.raises(StackError, match=f"^{WHERE}: precision 'fp8' is not one of auto, bf16, fp16, fp32"):
        runtime.precision("fp8", CPU, WHERE)


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is valid where CUDA is")
@pytest.mark.parametrize("member", ["minilm", "minilm-ft"])
def test_members_refuse_fp16_on_the_cpu_before_loading_anything(project, member):
    """Frozen and fine-tuned members read the same word, and say which file to fix."""
    from stack.members.registry import load_member

    with pytest.raises(StackError, match=f"configs/members/{member}.yaml: precision fp16 needs a CUDA device"):
        load_member(member, ["precision=fp16"])
    with pytest.raises(StackError, match=f"configs/members/{member}.yaml: device 'cuda:7', but"):
        load_member(member, ["device=cuda:7", "precision=fp32"])


def test_torch_dtype_and_autocast():
    assert [runtime.torch_dtype(p) for p in ("bf16", "fp16", "fp32")] == [torch.bfloat16, torch.float16, torch.float32]
    a, b = torch.randn(3, 4), torch.randn(4, 2)
    with runtime.autocast("fp32", CPU):
        assert (a @ b).dtype == torch.float32
    with runtime.autocast("bf16", CPU):
        assert (a @ b).dtype == torch.bfloat16


# --- threads and ranks ------------------------------------------------------------------------------------------

def test_threads_share_the_usable_cores_among_local_ranks(monkeypatch):
    for key in ("LOCAL_WORLD_SIZE", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert runtime.threads(0) == 8 and runtime.threads(3) == 3
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert runtime.threads(0) == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")  # more ranks than cores: still one each
    assert runtime.threads(0) == 1
    before = torch.get_num_threads()
    try:
        assert runtime.set_threads(1) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_rank_world_size_and_is_main(monkeypatch):
    for key in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    assert (runtime.rank(), runtime.world_size(), runtime.is_main()) == (0, 1, True)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert (runtime.rank(), runtime.world_size(), runtime.is_main()) == (1, 2, False)


# --- CPU attention ----------------------------------------------------------------------------------------------

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
    if onednn and not runtime.onednn(dtype):
        pytest.skip(f"oneDNN builds no {dtype} softmax on this CPU (tests/test_avx2.py covers the fallback)")
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


# --- heap reuse ---------------------------------------------------------------------------------------------------

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
    monkeypatch.setattr(runtime, "_glibc", lambda: None)
    with heap_reuse() as applied:
        assert applied is False


def test_torchrun_ranks_get_their_own_visible_gpu_or_a_clear_line(monkeypatch):
    current = _cuda(monkeypatch, 1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")  # a second rank on a machine with one visible GPU
    with pytest.raises(StackError, match=f"^{WHERE}: this process would use GPU 1 \\(LOCAL_RANK\\), but 1 CUDA device "
                                         "is visible; start one torchrun process per visible GPU"):
        runtime.device("auto", WHERE)
    with pytest.raises(StackError, match="device 'cuda:0' puts every torchrun rank on one GPU; set `device: auto`"):
        runtime.device("cuda:0", WHERE)
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert runtime.device("auto", WHERE) == CUDA0 and current == [CUDA0]
