"""CPU run-time settings for the torch stages: intra-op threads and glibc's heap.

glibc serves every allocation above its mmap threshold (128 KiB at first, adjusted up to 32 MiB) with a fresh
``mmap`` and gives it back on ``free``, so a model that allocates the same 25 MB activation each layer pays page
faults on every byte, every time: in MiniLM's embedding, GELU and the bias copy of ``addmm`` took 7-20 ms a call
instead of 1. ``heap_reuse`` keeps freed memory in the heap for the next batch (no mmap, no trimming) while a
stage runs, then restores glibc's defaults. The resident set stays at the largest batch's working set, which is
already the peak; elsewhere (macOS, musl) it does nothing.

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

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt parameters (malloc.h)
DEFAULTS = {M_TRIM_THRESHOLD: 128 * 1024, M_MMAP_MAX: 65536}
REUSE = {M_TRIM_THRESHOLD: 2**31 - 1, M_MMAP_MAX: 0}


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


@contextlib.contextmanager
def heap_reuse():
    """Inside: freed memory stays in the heap for reuse; -> whether glibc took the setting. On exit glibc's
    initial settings return and the kept memory goes back to the system."""
    libc = _glibc()
    applied = libc is not None and _apply(libc, REUSE)
    try:
        yield applied
    finally:
        if applied:
            _apply(libc, DEFAULTS)
            libc.malloc_trim(0)
