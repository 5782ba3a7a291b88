"""glibc's allocator set for a process that allocates and frees megabyte buffers all the time.

The producer (chunk buffers) and the server (request batches) both do, from
threads, and glibc's defaults serve them badly in two ways:

* its mmap threshold moves: it rises each time a large mmap'd buffer is freed,
  so which buffers are mmap'd, and faulted in page by page on every use,
  depends on the history of the process;
* a thread other than the main one allocates from an arena of its own, and
  those arenas give their free top back to the kernel as soon as it passes the
  trim threshold, so the next buffer of the same size is fresh pages again.

Each entry point sets the numbers that fit its buffers, once, before its
threads start: the setting is process-wide, so no library class does it.
Without glibc (musl, macOS) nothing changes. ``tests/core/test_malloc.py``
shows the effect, in a process of its own.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

# glibc's mallopt parameter numbers (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8


def tune_malloc(*, arenas: int, mmap_threshold: int, trim_threshold: int | None = None) -> None:
    """At most ``arenas`` arenas; buffers of ``mmap_threshold`` bytes or more mmap'd (and unmapped when freed);
    free memory kept in an arena up to ``trim_threshold`` bytes (glibc's default, 128 kB, when None).

    Setting either threshold fixes both: glibc stops moving them.
    """
    settings = [(_M_ARENA_MAX, arenas), (_M_MMAP_THRESHOLD, mmap_threshold)]
    if trim_threshold is not None:
        settings.append((_M_TRIM_THRESHOLD, trim_threshold))
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        for parameter, value in settings:
            if not libc.mallopt(parameter, value):
                log.debug("mallopt(%d, %d) refused", parameter, value)
    except (OSError, AttributeError) as error:
        log.debug("malloc left as it is: %s", error)
