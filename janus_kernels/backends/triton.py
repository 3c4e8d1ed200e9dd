"""The Triton kernels (janus_kernels/triton): CUDA devices, or CPU tensors under the Triton
interpreter (TRITON_INTERPRET=1, for tests; never chosen by default there)."""
from __future__ import annotations

import importlib
import os
from typing import Optional

import torch

from . import Backend, Serves, register

_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
# float64 attention is not served: part of the kernels' arithmetic runs in float32 (the
# fuzz test measured 1.4e-7 errors in dV), so fp64 calls go to the reference
_ATTN_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_HEAD_DIMS = dict(head_dims=lambda d: 1 <= d <= 256, head_dims_text="in [1, 256]")
# the score modifiers are applied in the score tile of every attention kernel
_MODS = ("softcap", "rel_bias")


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _importable() -> Optional[str]:
    try:
        import triton  # noqa: F401
    except ImportError as e:
        return f"triton is not importable ({e})"
    return None


def _lazy(module: str, fn: str):
    """Raw function `fn` of janus_kernels.triton.<module>, imported on first use (triton is an
    optional dependency, and importing it costs seconds)."""
    def call(*args):
        return getattr(importlib.import_module(f"janus_kernels.triton.{module}"), fn)(*args)
    call.__name__ = fn
    return staticmethod(call)


_LOSS_OPS = ("symmetric_kl", "cross_entropy", "janus_rows", "dropout_add")


class TritonBackend(Backend):
    name = "triton"
    serves = (
        Serves(("attention",), "cuda", _ATTN_DTYPES, priority=20, features=_MODS, **_HEAD_DIMS),
        Serves(_LOSS_OPS, "cuda", _DTYPES, priority=20),
        # the interpreter: correct and slow, so below the reference
        Serves(("attention",), "cpu", _ATTN_DTYPES, priority=-1, features=_MODS,
               **_HEAD_DIMS),
        Serves(_LOSS_OPS, "cpu", _DTYPES, priority=-1),
    )

    def unavailable(self, device: torch.device,
                    dtype: Optional[torch.dtype] = None) -> Optional[str]:
        reason = _importable()
        if reason:
            return reason
        if device.type == "cpu":
            return None if interpreted() else \
                "needs CUDA tensors (or TRITON_INTERPRET=1 for the CPU interpreter)"
        if device.type == "cuda":
            if not torch.cuda.is_available():
                return "torch sees no CUDA device"
            if interpreted():
                return "TRITON_INTERPRET=1 is set: the interpreter runs on CPU tensors only"
            cap = torch.cuda.get_device_capability(device)
            if cap < (7, 0):
                return f"Triton needs sm_70 or newer, the device is sm_{cap[0]}{cap[1]}"
            if dtype == torch.bfloat16 and cap < (8, 0):
                return f"bfloat16 dots need sm_80 or newer, the device is sm_{cap[0]}{cap[1]}"
        return None

    def detail(self, device: torch.device) -> str:
        return "interpreted (TRITON_INTERPRET=1)" if interpreted() else "compiled"

    attention_fwd = _lazy("attention", "attention_fwd")
    attention_bwd = _lazy("attention", "attention_bwd")
    kl_fwd, kl_bwd = _lazy("loss", "symkl_fwd"), _lazy("loss", "symkl_bwd")
    ce_fwd, ce_bwd = _lazy("loss", "ce_fwd"), _lazy("loss", "ce_bwd")
    janus_fwd = _lazy("janus_loss", "janus_rows_fwd")
    janus_bwd = _lazy("janus_loss", "janus_rows_bwd")
    dropout_fwd = _lazy("dropout", "dropout_fwd")
    dropout_bwd = _lazy("dropout", "dropout_bwd")

register(TritonBackend())
