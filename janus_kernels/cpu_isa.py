"""Which CPU kernels run: the ISA level, chosen at run time from what the CPU reports.

The CPU kernels (csrc/cpu) are compiled once per ISA level into their own modules
(``janus_kernels._cpu_avx2``, ``janus_kernels._cpu_avx512``; see setup.py), the way torch's
DispatchStub compiles its kernels once per capability. A module is imported only when the CPU
can run it, so a build made on an AVX-512 machine works on an AVX2-only one. Levels, lowest
first:

    avx2     AVX2 + FMA: 256-bit at::vec; bf16 / fp16 tiles widened to fp32 in the kernel
    avx512   AVX-512 F/BW/VL/DQ: 512-bit at::vec; bf16 / fp16 widened as above
    amx      avx512 plus bf16 attention tiles on AMX (oneDNN's bf16 brgemm ukernel)

The level in use is the highest the CPU supports, capped by the environment variable
``JANUS_CPU_ISA`` (``avx2|avx512|amx``; read on every call) or, for one block of code, by
``cap_cpu_isa(level)`` -- so any machine can run every level at or below its own (the test
suite is parametrized over them). A CPU without AVX2 + FMA has no compiled level; the
dispatcher then falls back to the reference backend.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import os
import threading
from typing import Dict, Iterator, List, Optional, Tuple

import torch

from . import _ext

__all__ = ["LEVELS", "detected_level", "active_level", "available_levels", "cap_cpu_isa",
           "level_ops", "describe"]

LEVELS: Tuple[str, ...] = ("avx2", "avx512", "amx")
#: level -> (extension module, op namespace)
_MODULES: Dict[str, Tuple[str, str]] = {
    "avx2": ("_cpu_avx2", "janus_avx2"),
    "avx512": ("_cpu_avx512", "janus_avx512"),
    "amx": ("_cpu_avx512", "janus_amx"),
}
#: CPU features each level needs (names as csrc/ops.cpp cpu_features() reports them)
_NEEDS: Dict[str, Tuple[str, ...]] = {
    "avx2": ("avx2", "fma"),
    "avx512": ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq"),
    "amx": ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq", "amx_bf16_brgemm"),
}
ENV_CAP = "JANUS_CPU_ISA"

_lock = threading.Lock()
_loaded: Dict[str, Optional[str]] = {}   # module name -> None (imported) or the import error
_cap = threading.local()                 # cap_cpu_isa() override for this thread


@functools.lru_cache(maxsize=None)
def cpu_features() -> frozenset:
    """The CPU features reported at run time (empty without the compiled extension)."""
    if not _ext.available():
        return frozenset()
    return frozenset(torch.ops.janus.cpu_features().split())


def _supported(level: str, feats: frozenset) -> bool:
    return all(f in feats for f in _NEEDS[level])


def _import(level: str) -> Optional[str]:
    """Import the level's module once; None on success, else why it is unavailable."""
    mod = _MODULES[level][0]
    with _lock:
        if mod not in _loaded:
            try:
                importlib.import_module(f"janus_kernels.{mod}")
                _loaded[mod] = None
            except ImportError as e:   # a build without it (non-x86, or a partial build)
                _loaded[mod] = f"janus_kernels.{mod} is not built ({e})"
        return _loaded[mod]


@functools.lru_cache(maxsize=None)
def detected_level() -> Optional[str]:
    """The highest level this CPU supports and this build has, ignoring any cap."""
    feats = cpu_features()
    best = None
    for level in LEVELS:
        if _supported(level, feats) and _import(level) is None:
            best = level
    return best


def _cap_level() -> Tuple[Optional[str], str]:
    """(cap, where it comes from): cap_cpu_isa() first, then JANUS_CPU_ISA."""
    override = getattr(_cap, "level", None)
    if override is not None:
        return override, "cap_cpu_isa()"
    env = os.environ.get(ENV_CAP, "").strip().lower()
    if not env:
        return None, ""
    if env not in LEVELS:
        raise ValueError(f"{ENV_CAP}={env!r}: expected one of {', '.join(LEVELS)}")
    return env, f"{ENV_CAP}={env}"


def active_level() -> Optional[str]:
    """The level the CPU kernels use now: the detected one, capped (None: no compiled level)."""
    best = detected_level()
    cap, _ = _cap_level()
    if best is None or cap is None:
        return best
    return LEVELS[min(LEVELS.index(best), LEVELS.index(cap))]


def available_levels() -> List[str]:
    """Every level this machine can run (for tests and benchmarks), ignoring the cap."""
    best = detected_level()
    return [] if best is None else list(LEVELS[:LEVELS.index(best) + 1])


@contextlib.contextmanager
def cap_cpu_isa(level: str) -> Iterator[str]:
    """Run the block with the CPU kernels capped at `level` (this thread only)."""
    if level not in LEVELS:
        raise ValueError(f"cap_cpu_isa: level must be one of {', '.join(LEVELS)}, got {level!r}")
    if level not in available_levels():
        raise ValueError(f"cap_cpu_isa: this CPU/build cannot run level {level!r} "
                         f"(available: {', '.join(available_levels()) or 'none'})")
    previous = getattr(_cap, "level", None)
    _cap.level = level
    try:
        yield level
    finally:
        _cap.level = previous


def level_ops(level: Optional[str] = None):
    """The op namespace (``torch.ops.janus_<level>``) of `level` (default: the active one)."""
    level = level or active_level()
    if level is None:
        raise RuntimeError(unavailable_reason() or "no compiled CPU level")
    return getattr(torch.ops, _MODULES[level][1])


def loaded_namespaces() -> List[str]:
    """Op namespaces of the modules imported so far (for the output pool's empty_cache)."""
    return [ns for lv, (mod, ns) in _MODULES.items() if _loaded.get(mod, "x") is None
            and lv != "amx"]


def unavailable_reason() -> Optional[str]:
    """Why no compiled CPU level can run here (None when one can)."""
    if not _ext.available():
        return "the compiled extension janus_kernels._C is not built"
    if detected_level() is not None:
        return None
    feats = cpu_features()
    if not _supported("avx2", feats):
        return ("this CPU lacks AVX2 + FMA (reports: " + (" ".join(sorted(feats)) or "none") +
                "); the compiled CPU kernels need them")
    return _import("avx2")


def describe() -> str:
    """One line: the level in use and why (for ``python -m janus_kernels``)."""
    best = detected_level()
    if best is None:
        return f"none ({unavailable_reason()})"
    cap, src = _cap_level()
    level = active_level()
    why = f"capped by {src}" if cap is not None and level != best else "the CPU's best"
    feats = " ".join(sorted(cpu_features()))
    return f"{level} ({why}; detected {best}; CPU reports: {feats})"
