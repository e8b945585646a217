"""Giving the C heap's free memory back to the kernel.

glibc keeps the pages of freed memory resident (it trims only a free block at the top of the heap): memory that a
burst allocated -- a bcc compile (~30-50 MiB inside clang/LLVM), the pieces of a large scrape (~20 MiB at 80k
series) -- stays counted in the process's anonymous RSS after it is freed. :func:`release_free_heap` returns it.
"""

from __future__ import annotations

import ctypes

__all__ = ["release_free_heap"]


def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim  # the process's own symbols: libc's
    except (OSError, AttributeError):  # not glibc
        return None


_TRIM = _malloc_trim()


def release_free_heap() -> None:
    """glibc ``malloc_trim(0)``: every arena's free pages go back to the kernel (about 1-2 ms with 100 MiB of
    heap); a no-op without glibc."""
    if _TRIM is not None:
        _TRIM(0)
