"""The CPU ISA level a benchmark run measures at: ours (``janus_kernels.cpu_isa``) and the
baselines' (ATen's CPU capability, MKL's and oneDNN's dispatch caps), and the environment that
caps all of them for ``python -m benchmarks --isa LEVEL``.

An AVX2 comparison on a bigger CPU is fair only when the baselines are capped too. torch reads
ATEN_CPU_CAPABILITY, MKL reads MKL_ENABLE_INSTRUCTIONS and oneDNN reads ONEDNN_MAX_CPU_ISA once,
when they are loaded, so they must be set before ``import torch``: an ``--isa`` run re-runs the
benchmark in a subprocess with them set (``cap_env``). JANUS_CPU_ISA (ours) is read per call.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Mapping, Optional

__all__ = ["ISA_CHOICES", "CAP_VARS", "cap_env", "needs_subprocess", "runtime_info",
           "level_mismatch", "header_line"]

ISA_CHOICES = ("native", "avx2", "avx512", "amx")
CAP_VARS = ("JANUS_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA")

#: level -> the cap of every library at that level. avx512 = AVX-512 F/BW/VL/DQ without the
#: bf16 / AMX extensions (oneDNN AVX512_CORE, MKL AVX512), as our avx512 kernels use; amx adds
#: AVX512-BF16 and AMX (oneDNN AVX512_CORE_AMX, MKL AVX512_E4). ATen has no level above avx512.
_CAPS: Dict[str, Dict[str, str]] = {
    "avx2": {"JANUS_CPU_ISA": "avx2", "ATEN_CPU_CAPABILITY": "avx2",
             "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "avx512": {"JANUS_CPU_ISA": "avx512", "ATEN_CPU_CAPABILITY": "avx512",
               "MKL_ENABLE_INSTRUCTIONS": "AVX512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
    "amx": {"JANUS_CPU_ISA": "amx", "ATEN_CPU_CAPABILITY": "avx512",
            "MKL_ENABLE_INSTRUCTIONS": "AVX512_E4", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"},
}


def _check(level: str) -> None:
    if level not in ISA_CHOICES:
        raise ValueError(f"isa: expected one of {', '.join(ISA_CHOICES)}, got {level!r}")


def cap_env(level: str, base: Mapping[str, str]) -> Dict[str, str]:
    """``base`` with every library capped at ``level``; "native" leaves ``base`` as it is
    (caps the user set stay, and are reported)."""
    _check(level)
    env = dict(base)
    if level != "native":
        env.update(_CAPS[level])
        # torch.compile's on-disk kernel cache does not key on ATEN_CPU_CAPABILITY: a kernel
        # compiled for AVX-512 by a native run was reused under the AVX2 cap and crashed
        # (general protection fault in compiled FlexAttention), so each level gets its own.
        # (torch sets TORCHINDUCTOR_CACHE_DIR in its own process once it has compiled, so
        # the parent's value is the shared default: always derive a per-level one.)
        import getpass
        import tempfile
        root = base.get("TORCHINDUCTOR_CACHE_DIR") or os.path.join(
            tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}")
        env["TORCHINDUCTOR_CACHE_DIR"] = f"{root.rstrip(os.sep)}_isa_{level}"
    return env


def needs_subprocess(level: str, environ: Mapping[str, str]) -> bool:
    """Whether this process (whose torch is loaded already) lacks the caps of ``level``: the
    run must then happen in a subprocess started with ``cap_env(level, environ)``."""
    _check(level)
    return level != "native" and any(environ.get(k) != v for k, v in _CAPS[level].items())


def runtime_info() -> Dict[str, Any]:
    """The levels in effect in this process: ours (level, why, cpu_isa.describe()) and the
    baselines' (ATen's capability and the caps set in the environment)."""
    import torch
    info: Dict[str, Any] = {
        "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "caps": {k: os.environ[k] for k in CAP_VARS if os.environ.get(k)},
        "ours_level": None,
    }
    try:
        from janus_kernels import cpu_isa
    except ImportError as e:   # a build from before the per-ISA split
        info["ours"] = f"n/a (janus_kernels.cpu_isa: {e})"
        return info
    try:
        level, best = cpu_isa.active_level(), cpu_isa.detected_level()
        info["ours_level"] = level
        info["ours"] = cpu_isa.describe()
        if level is not None:
            cap = os.environ.get("JANUS_CPU_ISA", "").strip().lower()
            info["ours_why"] = ("the CPU's best" if level == best
                                else f"capped by JANUS_CPU_ISA={cap}; detected {best}")
    except Exception as e:  # noqa: BLE001 - e.g. a bad JANUS_CPU_ISA value: say so, go on
        info["ours"] = f"n/a ({type(e).__name__}: {e})"
    return info


def level_mismatch(requested: str, info: Mapping[str, Any]) -> Optional[str]:
    """Why a run asked for ``requested`` does not measure at that level (None: it does, or
    the build cannot tell). A CPU below the level cannot be capped up to it."""
    _check(requested)
    if requested == "native" or "ours_why" not in info:
        return None
    if info.get("ours_level") != requested:
        return (f"--isa {requested}: our kernels run at level {info.get('ours_level')} here "
                f"({info.get('ours')}); this CPU or build cannot run {requested}")
    return None


def header_line(meta: Mapping[str, Any]) -> str:
    """One line for every table header: the CPU, our ISA level and the baselines'."""
    isa = meta.get("isa") or {}
    if meta.get("gpu"):
        return f"Device: {meta['gpu']} (CUDA {meta.get('cuda')}); host CPU {meta.get('cpu')}."
    ours = isa.get("ours_level")
    ours_txt = (f"ISA level **{ours}** ({isa.get('ours_why')})" if ours
                else isa.get("ours", "ISA level not recorded"))
    caps = isa.get("caps") or {}
    base = [f"ATen CPU capability {isa.get('aten_cpu_capability', meta.get('cpu_capability'))}"]
    base += [f"{k}={v}" for k, v in caps.items()
             if k not in ("JANUS_CPU_ISA", "ATEN_CPU_CAPABILITY")]   # ATen's: shown as in effect
    requested = isa.get("requested")
    req = f" Run with `--isa {requested}`." if requested and requested != "native" else ""
    return (f"CPU: {meta.get('cpu', '?')}; ours: {ours_txt}; baselines: {', '.join(base)}"
            f"{'' if len(base) > 1 else ' (MKL / oneDNN uncapped)'}.{req}")
