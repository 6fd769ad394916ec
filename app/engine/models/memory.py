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


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
LARGE_BUFFER_BYTES = 4 << 20


def keep_large_buffers_out_of_the_heap() -> None:
    """Serve every allocation of 4 MiB or more (weights, a batch's logits) straight from mmap.

    glibc raises its mmap threshold (up to 32 MiB) each time such a buffer is freed, after which
    weights of a model loaded later come from the heap, between small objects that outlive them: an
    unloaded model then left up to 36 MiB behind that malloc_trim could not return (a 90 MB model
    loaded and unloaded four times). A fixed threshold keeps big buffers in mappings of their own,
    unmapped whole when freed: RSS back within 6 MiB of before. No cost measured at 1, 16 or 64 streams.
    """
    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(M_MMAP_THRESHOLD, LARGE_BUFFER_BYTES)


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
