"""Process memory policy for CPU training: keep freed memory for reuse (glibc malloc).

A training step allocates the same tens of MB-sized activations and gradients every step.
glibc maps each allocation above its mmap threshold (at most 32 MB, adjusted as blocks are
freed) afresh and unmaps it when freed, and trims the heap top, so every step pays
first-touch page faults on memory it used a moment before: at the authors' IWSLT size on a
2-core CPU that was 7% of a CMLM step and 13% of a JANUS step (whose tensors are larger), so
it also inflated the JANUS / CMLM ratio (benchmarks/train_step.py, BENCHMARKS.md).
:func:`keep_freed_memory` serves every allocation from the heap and never trims it: freed
blocks are reused, at the price of a process that keeps its peak memory mapped. torch's own
advice for CPU training (jemalloc / tcmalloc through LD_PRELOAD) has the same effect.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4   # glibc malloc.h
_applied = False


def keep_freed_memory() -> bool:
    """Apply the policy (module docstring) once per process; True when it is in effect.

    A no-op (False) off Linux / glibc, and when the environment variable
    ``JANUS_KEEP_FREED_MEMORY=0`` opts out."""
    global _applied
    if _applied:
        return True
    if os.environ.get("JANUS_KEEP_FREED_MEMORY", "1") == "0":
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):   # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # mallopt returns 1 on success; the trim threshold is an int (2 GiB - 1: never in practice)
    _applied = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1))
    return _applied
