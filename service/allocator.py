"""glibc malloc settings for a serving worker, so freed temporaries do not stay resident.

glibc serves an allocation above its mmap threshold (128 KiB at start) with a fresh
mapping that goes back to the system when freed, but the first time such a block is freed
it raises the threshold to that block's size (up to 32 MiB). From then on blocks of that
size come from the heap of the allocating thread's arena, and what is freed there mostly
stays resident: each thread's arena keeps the high-water mark of its own temporaries. An
Argus worker has several such threads (the journal's ingestion, the thread pool of scrapes,
polls and journal appends, AnyIO's): after a minute of 64-row requests with scrapes every
2 s, their arenas held 15-25 MB of free memory per worker (``malloc_info``), about half
the worker's RSS above the bare BentoML service's.

``install()`` does two things, the same as starting the worker with
``MALLOC_MMAP_THRESHOLD_=131072 MALLOC_ARENA_MAX=2`` (an operator's own ``MALLOC_*``
settings win; a no-op outside glibc):

* it sets the threshold explicitly (``mallopt(M_MMAP_THRESHOLD, 128 KiB)``), which also
  turns the adjustment off: large temporaries (window matrices, SQLite blocks, sort
  buffers) are mapped and unmapped each time, a few microseconds per megabyte;
* it caps the arenas at two (``M_ARENA_MAX``), the main one and one that every other
  thread shares, so what one thread frees the next one reuses. Python threads allocate
  under the GIL, so they seldom wait for each other's arena lock.

Measured with ``bench/serving.py``'s client (2 workers, 30 s of 1-row then 30 s of 64-row
requests, a scrape every 2 s, 2 rounds), worker RSS at the end: 161-170 MB without,
149-159 MB with (the bare BentoML service: 130 MB either way); the free memory glibc held
went from 13-25 MB to 6-11 MB per worker (``mallinfo2``). No req/s or CPU cost measured
(3 interleaved rounds: req/s 1.03 and 1.00, CPU per request 0.98 and 1.00, 1 and 64 rows).
"""

from __future__ import annotations

import ctypes
import os
import sys

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter numbers (malloc.h)
M_ARENA_MAX = -8
MMAP_THRESHOLD = 128 * 1024
ARENA_MAX = 2

_installed = False


def install(threshold: int = MMAP_THRESHOLD, arenas: int = ARENA_MAX) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes and cap its arenas at ``arenas``
    for this process (once; call it before the process starts threads).

    Returns whether the settings are made: True after successful ``mallopt`` calls (or
    earlier ones), False where there is no glibc or the environment already chose.
    """
    global _installed
    if _installed:
        return True
    chosen = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_ARENA_MAX")
    if not sys.platform.startswith("linux") or any(name in os.environ for name in chosen):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
        if not hasattr(libc, "gnu_get_libc_version"):  # musl's mallopt does nothing
            return False
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _installed = bool(mallopt(M_MMAP_THRESHOLD, threshold)) and bool(mallopt(M_ARENA_MAX, arenas))
    return _installed
