"""Process-level allocator tuning for CPU training: freed activations stay mapped."""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """Stops glibc from returning large freed buffers to the OS, for this process.

    Every update frees and re-allocates the same multi-megabyte activations; by
    default glibc serves them with fresh ``mmap`` calls whose pages fault back in
    on each step. The same effect as ``MALLOC_MMAP_MAX_=0
    MALLOC_TRIM_THRESHOLD_=68719476736``: a few percent per update at width 2048,
    at the cost of the process keeping its peak memory. Returns ``False`` where
    the C library is not glibc (nothing is changed there).

    Examples:
        >>> isinstance(keep_freed_memory(), bool)
        True
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 64 << 30))
