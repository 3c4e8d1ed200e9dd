"""Loading of the compiled extension (janus_kernels._C), with a clear error when it is
missing. `import janus_kernels` always works; only calling a compiled op needs it."""
from __future__ import annotations

from typing import Optional

import torch

_LOADED = False
_ERROR: Optional[str] = None

try:  # torch must be imported first, or the .so cannot find libc10
    from . import _C  # noqa: F401
    _LOADED = True
except ImportError as e:  # pragma: no cover - depends on the build
    _ERROR = str(e)


def available() -> bool:
    return _LOADED


def build_info() -> str:
    """'cpu+avx512+openmp[;cuda]' for the compiled extension, or 'missing'."""
    return torch.ops.janus.build_info() if _LOADED else "missing"


def has_cuda_kernels() -> bool:
    return _LOADED and ";cuda" in build_info()


def require(what: str) -> None:
    if not _LOADED:
        raise RuntimeError(
            f"janus_kernels: {what} needs the compiled extension janus_kernels._C, which "
            f"failed to import ({_ERROR}). Build it with `make build` or "
            f"`pip install --no-build-isolation -e .`, or pass backend='reference'.")
