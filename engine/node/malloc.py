"""A node keeps the memory it frees for its next frames, instead of handing it back to the kernel.

A node allocates and frees buffers of megabytes all the time (a 4 MiB PUT's body, asyncssh's
256 KiB packets and what it makes of them). glibc's defaults give a freed buffer over its mmap
threshold (128 KiB, adapting upward) or the free memory above its trim threshold back to the
kernel, and the next buffer faults it in again a page at a time: with them, page faults took a
third of a node's CPU in a replicated import (BENCHMARKS.md, "## Cluster"). Buffers under 32 MiB
then come from the heap, and up to 64 MiB freed at its top stays there. Where there is no glibc
mallopt (musl's does nothing, macOS has none), nothing changes.
"""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD = -1       # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20   # PUT frames (4 MiB), catalog parts (16 MiB); glibc caps it here
TRIM_THRESHOLD = 64 << 20


def keep_freed_memory() -> bool:
    """Sets the thresholds above for this process; False where there is no mallopt to do it."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return (mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
            and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
