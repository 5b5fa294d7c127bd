"""Run-time decisions of every torch stage, in one place: device, precision, threads, and glibc's heap.

- ``device("auto")``: this process's CUDA device when there is one (``LOCAL_RANK`` under torchrun), else the CPU;
  ``cpu``, ``cuda``, ``cuda:<k>`` are checked against what is visible.
- ``precision("auto", device)``: bf16 where the device computes it natively (CPUs with AVX-512 BF16 / AMX through
  oneDNN, CUDA devices from Ampere on; emulated bf16 does not count), fp16 on older CUDA devices, else fp32.
  ``fp16`` needs CUDA. An explicit ``bf16`` on a CPU without native bf16 runs, emulated (a config written on an
  AMX machine still works on a laptop, with the same rounding), after one line saying it will be several times
  slower than fp32 there. Frozen and fine-tuned members read the same word (``precision``).
- ``onednn(dtype)``: whether oneDNN builds the primitives of the CPU fast paths (stack.backbones.attention's
  softmax, stack.backbones.packed's linears) in ``dtype`` on this CPU, probed once per process by building them
  on tiny tensors. An AVX2-only CPU has none in bf16 (oneDNN: "could not create a primitive descriptor"); there
  the fast paths fall back to the plain PyTorch ops.
- ``threads(0)``: every core this process may use, shared among the local ranks of a torchrun job.
- ``heap_reuse()``: glibc serves every allocation above its mmap threshold (128 KiB at first, raised as blocks are
  freed, to at most 32 MiB) with a fresh ``mmap`` and gives it back on ``free``, so a model whose activations
  exceed that pays page faults on every byte of them, every batch (MPNet's 48 MiB FFN activations: the stage ran
  1.2-1.3x slower). Inside, freed memory stays in the heap for the next batch (no mmap, no trimming). On exit it
  leaves glibc as its own adaptive rule ends up after big blocks (mmap above 32 MiB, trim above 64 MiB: setting any
  option switches that rule off for good, and glibc's initial 128 KiB would then mmap every block above it) and
  gives the kept memory back. It does nothing where glibc is absent (macOS, musl) or where the user tunes malloc
  through ``MALLOC_*_`` / ``GLIBC_TUNABLES``; nested uses apply once.

    from stack.runtime import device, precision, set_threads, heap_reuse
    dev = device("auto", where="configs/members/mpnet.yaml")
    prec = precision("auto", dev, where="configs/members/mpnet.yaml")     # "bf16" | "fp16" | "fp32"
    set_threads(0)
    with heap_reuse():
        ...                           # batched inference
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import sys
import threading
import warnings

from stack.errors import StackError

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4  # mallopt parameters (malloc.h)
ADAPTED = {M_MMAP_THRESHOLD: 32 * 2**20, M_TRIM_THRESHOLD: 64 * 2**20, M_MMAP_MAX: 65536}
REUSE = {M_TRIM_THRESHOLD: 2**31 - 1, M_MMAP_MAX: 0}
_lock = threading.Lock()
_depth = 0


PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def rank() -> int:
    """This process's rank under torchrun (0 otherwise); only rank 0 writes files."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0


def device(requested: str = "auto", where: str = ""):
    """``auto`` (this rank's CUDA device when there is one, else the CPU), ``cpu``, ``cuda`` or ``cuda:<k>``
    -> ``torch.device`` (a CUDA one is made current); a CUDA device that is not visible is a StackError naming
    ``where``."""
    import torch

    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    bad = f"{where}: device {requested!r} is not one of auto, cpu, cuda, cuda:<k>"
    if requested != "auto" and not requested.startswith("cuda"):
        raise StackError(bad)
    if requested.startswith("cuda:") and world_size() > 1:
        raise StackError(f"{where}: device {requested!r} puts every torchrun rank on one GPU; set `device: auto` "
                         "(each rank takes its LOCAL_RANK's GPU)")
    try:
        dev = torch.device("cuda" if requested == "auto" else requested)
    except RuntimeError:
        raise StackError(bad) from None
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    local = int(os.environ.get("LOCAL_RANK", "0"))
    index = dev.index if dev.index is not None else local
    if index >= visible:
        seen = "1 CUDA device is" if visible == 1 else f"{visible or 'no'} CUDA devices are"
        if dev.index is not None or not visible:
            raise StackError(f"{where}: device {requested!r}, but {seen} visible; set `device: auto` (or cpu)")
        raise StackError(f"{where}: this process would use GPU {index} (LOCAL_RANK), but {seen} visible; start one "
                         "torchrun process per visible GPU")
    return _current(torch.device("cuda", index))


def _current(dev):
    """Make ``dev`` the current CUDA device, so that checks and collectives (nccl) of this rank run on it."""
    import torch

    torch.cuda.set_device(dev)
    return dev


def native_bf16(dev) -> bool:
    """Whether ``dev`` computes bf16 natively (not emulated): oneDNN's check on the CPU, compute capability on CUDA."""
    import torch

    if dev.type == "cuda":
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    return bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)())


_warned: set[str] = set()


def precision(requested: str, dev, where: str = "") -> str:
    """The precision to run in on ``dev``: ``auto`` -> bf16 where native, fp16 on other CUDA devices, else fp32.
    An explicit bf16 where it is not native is kept (emulated), with one warning per ``where`` and process."""
    if requested not in PRECISIONS:
        raise StackError(f"{where}: precision {requested!r} is not one of {', '.join(PRECISIONS)}")
    if requested == "auto":
        return "bf16" if native_bf16(dev) else "fp16" if dev.type == "cuda" else "fp32"
    if requested == "fp16" and dev.type != "cuda":
        raise StackError(f"{where}: precision fp16 needs a CUDA device; use bf16 or auto on the CPU")
    if requested == "bf16" and dev.type == "cpu" and where not in _warned and not native_bf16(dev):
        _warned.add(where)
        warnings.warn(f"{where or 'precision'}: bf16 on a CPU without native bf16 (no AVX-512 BF16 or AMX) is "
                      "emulated, several times slower than fp32; set precision: auto (fp32 here) to run at full speed",
                      stacklevel=2)
    return requested


def onednn(dtype) -> bool:
    """Whether oneDNN builds a softmax and a packed linear in ``dtype`` (torch.float32 or torch.bfloat16) on this
    CPU: probed once per process and dtype. False for other dtypes and where PyTorch lacks oneDNN."""
    return _onednn_probe(dtype)


@functools.cache
def _onednn_probe(dtype) -> bool:
    import torch

    if dtype not in (torch.float32, torch.bfloat16) or not torch.backends.mkldnn.is_available():
        return False
    try:
        scores = torch.zeros(1, 1, 2, 2, dtype=dtype)
        torch.softmax(scores.to_mkldnn(), dim=-1).to_dense()
        packed = torch.ops.mkldnn._reorder_linear_weight(torch.zeros(2, 2, dtype=dtype), 2)
        torch.ops.mkldnn._linear_pointwise(torch.zeros(2, 2, dtype=dtype), packed, None, "none", [], "")
    except (RuntimeError, AttributeError, NotImplementedError):  # "could not create a primitive descriptor", ...
        return False
    return True


def for_scoring(member: dict) -> dict:
    """A saved member's config (``config_json["member"]``) as this machine scores with it: its own device
    (``auto``: the machine that fitted it need not be this one), and fp16, which needs CUDA, as ``auto`` where
    there is none. Which precision then embeds new essays: ``scoring_precision``."""
    if "device" not in member:
        return member
    member = {**member, "device": "auto"}
    if member.get("precision") == "fp16" and device("auto").type != "cuda":
        member["precision"] = "auto"
    return member


ENGINES = ("auto", "torch", "onnx")


def engine(requested: str, dev, prec: str, where: str = "") -> str:
    """Who runs a frozen encoder: ``torch``, or ``onnx`` (ONNX Runtime, fp32 on the CPU only: stack.backbones.ort).
    ``auto`` takes onnx where it applies (the CPU, fp32: it was faster there at identical embeddings) and its
    packages are installed, else torch."""
    import importlib.util

    if requested not in ENGINES:
        raise StackError(f"{where}: engine {requested!r} is not one of {', '.join(ENGINES)}")
    fits = dev.type == "cpu" and prec == "fp32"
    if requested == "onnx" and not fits:
        raise StackError(f"{where}: engine onnx runs fp32 on the CPU, not {prec} on {dev.type}; set precision: fp32 "
                         "and device: cpu, or engine: auto")
    if requested == "auto":
        have = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))
        return "onnx" if fits and have else "torch"
    return requested


def scoring_precision(fitted: str | None, requested: str, where: str) -> str | None:
    """The precision to embed new essays in with a frozen member whose heads were fitted on ``fitted``
    embeddings: that one where this machine computes it natively (or it is fp32), else None (``requested``'s
    ``auto``: fp32 here), with a warning, since embeddings then differ slightly from the fitted ones."""
    if fitted in (None, "fp32"):
        return fitted
    dev = device(requested, where)
    if precision("auto", dev, where) == fitted:
        return fitted
    warnings.warn(f"{where}: fitted on {fitted} embeddings, which this machine does not compute natively; "
                  "embedding in fp32 (scores may differ slightly)", stacklevel=2)
    return None


def describe(prec: str, dev) -> str:
    """Why this precision, in a few words."""
    if dev.type == "cuda":
        return prec
    if prec == "bf16":
        return "bf16, native: AVX-512 BF16/AMX" if native_bf16(dev) else "bf16, emulated: no native bf16"
    return f"{prec}: no native bf16" if not native_bf16(dev) else prec


def say(line: str, out=None) -> None:
    """A line for the person running a stage (stderr, beside the progress bars), or to ``out``."""
    (out or (lambda text: print(text, file=sys.stderr, flush=True)))(line)


def torch_dtype(prec: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[prec]


def autocast(prec: str, dev):
    """Mixed-precision context for ``prec`` on ``dev`` (a no-op for fp32)."""
    import torch

    if prec == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=dev.type, dtype=torch_dtype(prec))


def threads(requested: int = 0) -> int:
    """Intra-op threads for this process: ``requested``, else the usable cores shared among local ranks."""
    if requested > 0:
        return requested
    local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    return max(1, len(os.sched_getaffinity(0)) // max(local, 1))


def set_threads(requested: int = 0) -> int:
    """Set torch's intra-op threads to ``threads(requested)``; -> the number set."""
    import torch

    n = threads(requested)
    torch.set_num_threads(n)
    return n


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    except (OSError, AttributeError):  # not glibc
        return None
    return libc


def _apply(libc, settings: dict[int, int]) -> bool:
    return all(libc.mallopt(param, value) == 1 for param, value in settings.items())


def _user_tuned() -> bool:
    return "malloc" in os.environ.get("GLIBC_TUNABLES", "") or any(k.startswith("MALLOC_") for k in os.environ)


@contextlib.contextmanager
def heap_reuse():
    """Inside: freed memory stays in the heap for reuse; -> whether it is in effect. See the module docstring."""
    global _depth
    with _lock:
        libc = None if _user_tuned() else _glibc()
        applied = libc is not None and (_depth > 0 or _apply(libc, REUSE))
        _depth += applied
    try:
        yield applied
    finally:
        if applied:
            with _lock:
                _depth -= 1
                if _depth == 0:
                    _apply(libc, ADAPTED)
                    libc.malloc_trim(0)
