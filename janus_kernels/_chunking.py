"""Rows per chunk of ``fused_linear_janus_loss`` (janus_kernels/losses.py), chosen per device.

A chunk of c masked rows materializes three (c x V) logit blocks (AR rows of the KL, NAR, AUX:
one GEMM), their three (c x V) gradients, and the (3c x D) hidden rows with their gradients.
The policy sizes c so that these buffers fill a per-device memory budget:

* CUDA: a large budget (1/32 of the device memory, between 256 MiB and 1 GiB), so a step is a
  handful of chunks with big GEMMs rather than ~100 chunks x ~15 small launches each (the old
  fixed 2^22 / V rows gave 131 rows at V = 32000); rows rounded down to a multiple of 64
  (tensor-core tiles).
* CPU: a cache-sized budget (64 MiB, about a server's last-level cache), so the logits a
  chunk's row kernels re-read are still cached when its gradient GEMMs run; rows rounded
  down to a multiple of 8.

Reading the device's memory size is a host-side property query: no device synchronization.
"""
from __future__ import annotations

from typing import Union

import torch

__all__ = ["fused_loss_chunk_rows", "CPU_BUDGET_BYTES", "CUDA_BUDGET_MIN_BYTES",
           "CUDA_BUDGET_MAX_BYTES"]

CPU_BUDGET_BYTES = 64 << 20
CUDA_BUDGET_MIN_BYTES = 256 << 20
CUDA_BUDGET_MAX_BYTES = 1 << 30
_MIN_ROWS = 8          # below this the GEMMs run at a fraction of their speed
_STREAMS = 3           # AR (KL rows), NAR, AUX logits of one chunk


def _chunk_bytes_per_row(vocab: int, hidden: int, itemsize: int) -> int:
    """Bytes a chunk holds per masked row: logits + gradients of the three streams (the
    loss kernels' fp32 row statistics are negligible), and their hidden rows + gradients."""
    return _STREAMS * 2 * (vocab + hidden) * itemsize


def _budget_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        total = torch.cuda.get_device_properties(index).total_memory
        return max(CUDA_BUDGET_MIN_BYTES, min(CUDA_BUDGET_MAX_BYTES, total // 32))
    return CPU_BUDGET_BYTES


def fused_loss_chunk_rows(vocab: int, hidden: int, dtype: torch.dtype,
                          device: Union[str, torch.device]) -> int:
    """Rows per chunk for logits (rows x vocab) computed from hidden states (rows x hidden)
    of ``dtype`` on ``device``: at least 8, a multiple of 64 on CUDA and of 8 elsewhere."""
    if isinstance(vocab, bool) or not isinstance(vocab, int) or vocab < 1:
        raise ValueError(f"fused_loss_chunk_rows: vocab must be a positive int, got {vocab!r}")
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
        raise ValueError(f"fused_loss_chunk_rows: hidden must be a positive int, got {hidden!r}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"fused_loss_chunk_rows: dtype must be a floating torch.dtype, got "
                         f"{dtype!r}")
    device = torch.device(device)
    rows = _budget_bytes(device) // _chunk_bytes_per_row(vocab, hidden, dtype.itemsize)
    multiple = 64 if device.type == "cuda" else 8
    return max(_MIN_ROWS, rows // multiple * multiple)
