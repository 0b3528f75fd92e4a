"""glibc's heap, kept from shrinking and growing again on every socket read.

Why: by default glibc hands the top of its heap back to the kernel whenever a large
block is freed there, and asks for it again on the next large allocation; every page
taken back then costs a page fault. A service reading NATS does exactly that per read
(asyncio receives into a 256 KB buffer, nats-py copies out of it, the frames are
sliced off). A projector rebuild of the bench's 200k events took 45k page faults and
spent about a tenth of its CPU in the kernel for them; with a 4 MB pad kept at the top
of the heap and large buffers kept out of ``mmap``, it took 9k, at 3 MB more peak RSS
(docs/benchmarks.md, case 4).

Only on glibc; an operator's own ``MALLOC_*_`` settings win.
"""

from __future__ import annotations

import ctypes
import os
import sys

# mallopt(3) parameters
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

TOP_PAD_BYTES = 4 * 1024 * 1024
MMAP_THRESHOLD_BYTES = 1024 * 1024

_OPERATOR_SETTINGS = ("MALLOC_TOP_PAD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def _glibc() -> bool:
    if sys.platform != "linux":
        return False
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") is not None
    except (ValueError, OSError):
        return False


def keep_heap() -> bool:
    """Keep a pad at the top of the heap and large buffers in it (both settings: either
    alone turns off glibc's own adaptive threshold and makes things worse). True if set."""
    if not _glibc() or any(name in os.environ for name in _OPERATOR_SETTINGS):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_TOP_PAD, TOP_PAD_BYTES)) and bool(
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    )
