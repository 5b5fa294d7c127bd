"""CPU run-time settings for the torch stages: intra-op threads and glibc's heap.

glibc serves every allocation above its mmap threshold (128 KiB at first, raised as blocks are freed, to at most
32 MiB) with a fresh ``mmap`` and gives it back on ``free``, so a model whose activations exceed that pays page
faults on every byte of them, every batch (MPNet's 48 MiB FFN activations: the stage ran 1.2-1.3x slower).
``heap_reuse`` keeps freed memory in the heap for the next batch (no mmap, no trimming) while a stage runs. On
exit it leaves glibc as its own adaptive rule ends up after big blocks (mmap above 32 MiB, trim above 64 MiB:
setting any option switches that rule off for good, and glibc's initial 128 KiB would then mmap every block
above it) and gives the kept memory back. It does nothing where glibc is absent (macOS, musl) or where the user
tunes malloc through ``MALLOC_*_`` / ``GLIBC_TUNABLES``; nested uses apply once.

    from stack.runtime import heap_reuse, set_threads
    set_threads(0)                    # every core this process may use
    with heap_reuse():
        ...                           # batched inference
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import sys
import threading

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4  # mallopt parameters (malloc.h)
ADAPTED = {M_MMAP_THRESHOLD: 32 * 2**20, M_TRIM_THRESHOLD: 64 * 2**20, M_MMAP_MAX: 65536}
REUSE = {M_TRIM_THRESHOLD: 2**31 - 1, M_MMAP_MAX: 0}
_lock = threading.Lock()
_depth = 0


def set_threads(threads: int = 0) -> int:
    """Intra-op threads: ``threads`` or every core this process may use; -> the number set."""
    import torch

    n = threads or max(1, len(os.sched_getaffinity(0)))
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
