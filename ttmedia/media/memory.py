"""Large media buffers in the server process: glibc's malloc thresholds, set with mallopt(3)
through ctypes (Python has no binding for it).

Why the server's process sets them: a 13.7 MB base64 image edit makes buffers of its size on
the event loop's thread (the body's text as one str, which cannot be built without the GIL).
glibc gives a block that large fresh pages from the kernel (mmap, or a heap grown for it) and
hands them back when it is freed, so every such request touched ~3,300 new pages: 11 ms of page
faults in this VM for a copy that takes 1.5 ms in memory already mapped, and the token streams
waited for all of it. Allocating from the heap up to MMAP_THRESHOLD and keeping up to
TRIM_THRESHOLD of freed heap lets the next large request reuse the same pages.

The cost is memory: after a burst of large requests the process keeps up to TRIM_THRESHOLD of
freed heap instead of returning it at once (it is still reused for anything, and returned
above that). Nothing is done on a C library without mallopt (musl, macOS).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("ttmedia.server")

#: Blocks up to this size come from the heap (glibc's ceiling for it on 64-bit systems).
MMAP_THRESHOLD = 32 << 20
#: Freed heap kept for reuse before any of it goes back to the kernel.
TRIM_THRESHOLD = 64 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # from malloc.h


def reuse_large_blocks() -> bool:
    """Set both thresholds for this process; False where the C library has no mallopt."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    applied = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if not applied:
        log.debug("mallopt refused the large-block thresholds; glibc's defaults stay")
    return applied
