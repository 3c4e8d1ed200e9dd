"""The compiled CPU kernels (csrc/cpu), at the ISA level chosen per call (cpu_isa.py).

Attention computes float32, bfloat16 and float16 (bf16 natively on AMX, otherwise each tile
widened to fp32 inside the kernel), with the score modifiers softcap and rel_bias; float64
attention is not served (the default falls back to the reference; asking for "cpu" explicitly
raises). The loss kernels and the residual dropout serve every float dtype.
The raw ``janus::<op>`` CPU entries (e.g. ``torch.ops.janus.flash_attention_fwd`` on CPU
tensors) forward to the active level's namespace too.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import _ext, cpu_isa
from . import Backend, Serves, register

_ATTN_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_LOSS_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
MAX_HEAD_DIM = 256


def _ops():
    return cpu_isa.level_ops()


def _raw(op: str):
    """The backend's raw function for kernel op `op` of the active CPU level's namespace; multi-output ops come back
    as tuples (the backend contract), single outputs as tensors."""
    def call(*args):
        out = getattr(_ops(), op)(*args)
        return tuple(out) if isinstance(out, (list, tuple)) else out
    call.__name__ = op
    return staticmethod(call)


class CpuBackend(Backend):
    name = "cpu"
    serves = (
        Serves(("attention",), "cpu", _ATTN_DTYPES, priority=30,
               head_dims=lambda d: 1 <= d <= MAX_HEAD_DIM, head_dims_text=f"in [1, {MAX_HEAD_DIM}]",
               features=("softcap", "rel_bias")),
        Serves(("symmetric_kl", "cross_entropy", "janus_rows", "dropout_add"), "cpu",
               _LOSS_DTYPES, priority=30),
    )

    def unavailable(self, device: torch.device,
                    dtype: Optional[torch.dtype] = None) -> Optional[str]:
        return cpu_isa.unavailable_reason()

    def detail(self, device: torch.device) -> str:
        return f"ISA level {cpu_isa.describe()}"

    attention_fwd, attention_bwd = _raw("flash_attention_fwd"), _raw("flash_attention_bwd")
    kl_fwd, kl_bwd = _raw("symkl_rows_fwd"), _raw("symkl_rows_bwd")
    ce_fwd, ce_bwd = _raw("ce_rows_fwd"), _raw("ce_rows_bwd")
    janus_fwd, janus_bwd = _raw("janus_rows_fwd"), _raw("janus_rows_bwd")
    dropout_fwd, dropout_bwd = _raw("dropout_add_fwd"), _raw("dropout_bwd")

register(CpuBackend())

#: the kernel ops every CPU level implements (csrc/include/janus/op_schemas.h)
KERNEL_OPS = ("flash_attention_fwd", "flash_attention_bwd", "symkl_rows_fwd", "symkl_rows_bwd",
              "symkl_rows_bwd_into", "ce_rows_fwd", "ce_rows_bwd", "janus_rows_fwd",
              "janus_rows_bwd")


def _register_raw_cpu_entries() -> None:
    """CPU kernels of the raw ``janus::`` ops: forward to the active level's namespace."""
    if not _ext.available():
        return
    lib = torch.library.Library("janus", "IMPL")   # noqa: kept alive below
    for op in KERNEL_OPS:
        def forward(*args, _op=op):
            return getattr(_ops(), _op)(*args)
        lib.impl(op, forward, "CPU")
    _register_raw_cpu_entries.lib = lib


_register_raw_cpu_entries()


def empty_cache() -> int:
    """Release the output pool of every loaded CPU module; returns the bytes released."""
    return sum(int(getattr(torch.ops, ns).pool_clear()) for ns in cpu_isa.loaded_namespaces())
