"""glibc's malloc for a long-running router: two arenas and a fixed mmap threshold, so the RSS stays flat.

glibc gives each thread that allocates its own arena (up to 8 per core), and its mmap threshold
rises as large blocks are freed, so tensor buffers of ever-new batch shapes fragment the heap and a
server's RSS grows far past the model and its prefix cache. Two arenas and a fixed 128 KiB threshold
(large buffers mapped and unmapped whole) keep it flat, at a cost in throughput that docs/serving.md
measures; every server the project starts (`serve`, the SageMaker container) gets these settings.
"""
from __future__ import annotations

import ctypes
import ctypes.util

# variable -> (mallopt parameter, value)
MALLOC = {"MALLOC_ARENA_MAX": (-8, 2), "MALLOC_MMAP_THRESHOLD_": (-3, 128 * 1024)}


def libc():
    """This process's C library (None where there is none to find)."""
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name) if name else None
