"""Give freed heap memory back to the OS when the engine goes idle.

Batches of changing shapes leave glibc's malloc arenas fragmented, so a server's RSS creeps up
after bursts although nothing leaks; `malloc_trim(0)` returns the free pages. No-op off glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


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
