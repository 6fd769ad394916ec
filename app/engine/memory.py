"""Keep the server's CPU memory flat: one copy of each matmul kernel, and freed heap given back.

Batches of changing shapes leave glibc's malloc arenas fragmented, so a server's RSS creeps up
after bursts although nothing leaks; `malloc_trim(0)` returns the free pages when the engine goes idle
(no-op off glibc). Kernels per matmul shape are the other creep (see ModelRunner.warm_row_counts).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os


@functools.cache
def _libc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def release_free_memory() -> None:
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def keep_one_copy_of_cpu_kernels() -> None:
    """Turn off ideep's cache of oneDNN kernels (LRU_CACHE_CAPACITY), unless the environment sets it.

    PyTorch's CPU matmuls keep each per-shape kernel twice, in oneDNN's primitive cache and in ideep's
    LRU, ~0.3 MiB each copy. The second copy bought no speed (in-process bench, three runs each:
    50.8 vs 51.1 tok/s single stream, 435 vs 432 tok/s at batch 16). ideep reads the variable at its
    first matmul, so this must run before the model does.
    """
    os.environ.setdefault("LRU_CACHE_CAPACITY", "1")
