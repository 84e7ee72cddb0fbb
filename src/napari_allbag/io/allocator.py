"""Keep freed image buffers in the process instead of handing them back to the kernel (glibc).

Segmenting one C-NMC cell allocates and frees a dozen arrays of 0.1-1 MB (the decoded image, its
grey and mask planes, the 299 px crop). glibc serves allocations above its mmap threshold with
fresh mappings, and returns the top of the heap to the kernel once more than twice that is free,
so every cell's arrays came back as new pages, each page zeroed by the kernel on first touch: on
the 2-core development machine 1.7 of 3.8 CPU seconds per 1,860 cells were the kernel's
(benchmarks/bench_segment.py --scaling, docs/benchmarks.md). Fixed thresholds (arrays below 16
MB from the heap, up to 64 MB of free heap kept) halve the time per cell.

`tune_allocator` is called by the command line (`cli.main`) and by every worker process
(`ordered_pool`); not by the napari plugin, whose process lives for hours and holds the
viewer's own memory. Nothing is changed where the user set glibc's ``MALLOC_*`` variables
(theirs win), where ``NAPARI_ALLBAG_MALLOC=default`` is set, or off glibc (macOS, Windows,
musl).
"""

from __future__ import annotations

import ctypes
import os
import platform

#: glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: Allocations below this come from the heap (then reused), not from new mappings.
MMAP_THRESHOLD = 16 * 2**20
#: Free memory at the top of the heap kept for the next allocations instead of released.
TRIM_THRESHOLD = 64 * 2**20
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")

_tuned = False


def tune_allocator() -> bool:
    """Set glibc's mmap and trim thresholds for this process (once); whether they are set."""
    global _tuned
    if _tuned:
        return True
    if os.environ.get("NAPARI_ALLBAG_MALLOC", "").lower() == "default":
        return False
    if any(name in os.environ for name in _USER_SETTINGS):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    done = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    done = libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and done
    _tuned = done
    return done
