"""Triton kernel of ``janus_kernels.dropout_add``: ``residual + keep * y / (1 - p)`` with the
keep bits of janus_kernels/dropout_add.py (the same bits as the CPU kernels and the reference).

A program takes K stream blocks of 64 elements: one ``tl.philox`` call per (block, lane),
(K, 16) calls whose word w covers elements 64 k + 16 w + l, so each word is loaded, scaled
and stored as its own (K, 16) tile. Multiply and add are rounded separately
(``enable_fp_fusion=False``), as the CPU kernels do, so every backend gives the same bits.

Plain pointers only, so the kernel runs on triton 3.6-3.9 and under TRITON_INTERPRET=1.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

__all__ = ["dropout_fwd", "dropout_bwd", "KERNELS"]

_STREAM = 0x44524F50
_K = 16   # stream blocks (of 64 elements) per program


@triton.jit
def _word(Y, R, O, offs, n, bits, thr, scale, HAS_RES: tl.constexpr, ACC: tl.constexpr):
    inb = offs < n
    y = tl.load(Y + offs, mask=inb, other=0.0).to(ACC)
    m = tl.where(bits.to(tl.int64) >= thr, scale, 0.0).to(ACC)
    out = y * m
    if HAS_RES:
        out = tl.load(R + offs, mask=inb, other=0.0).to(ACC) + out
    tl.store(O + offs, out.to(O.dtype.element_ty), mask=inb)


@triton.jit
def _dropout_add_kernel(Y, R, O, n, thr, seed, SCALE, HAS_RES: tl.constexpr,
                        IS_F64: tl.constexpr, K: tl.constexpr):
    ACC: tl.constexpr = tl.float64 if IS_F64 else tl.float32
    scale = tl.load(SCALE).to(ACC)   # 1 / (1 - p) in double, rounded to ACC once
    k = tl.program_id(0).to(tl.int64) * K + tl.arange(0, K)[:, None]
    lane = tl.arange(0, 16)[None, :]
    call = k * 16 + lane
    c0 = (call & 0xFFFFFFFF).to(tl.uint32)
    c1 = (call >> 32).to(tl.uint32)
    c2 = tl.full(c0.shape, 0x44524F50, tl.uint32)
    c3 = tl.zeros(c0.shape, tl.uint32)
    w0, w1, w2, w3 = tl.philox(seed, c0, c1, c2, c3)
    base = k * 64 + lane
    _word(Y, R, O, base, n, w0, thr, scale, HAS_RES, ACC)
    _word(Y, R, O, base + 16, n, w1, thr, scale, HAS_RES, ACC)
    _word(Y, R, O, base + 32, n, w2, thr, scale, HAS_RES, ACC)
    _word(Y, R, O, base + 48, n, w3, thr, scale, HAS_RES, ACC)


KERNELS = {"dropout_add": _dropout_add_kernel}


def _threshold(p: float) -> int:
    return min(int(p * 4294967296.0), 0xFFFFFFFF)


def dropout_fwd(y: torch.Tensor, residual: Optional[torch.Tensor], p: float,
                seed: torch.Tensor) -> torch.Tensor:
    y = y.contiguous()
    res = None if residual is None else residual.contiguous()
    out = torch.empty_like(y)
    n = y.numel()
    if n == 0:
        return out
    f64 = y.dtype == torch.float64
    scale = torch.tensor([1.0 / (1.0 - p)], dtype=torch.float64 if f64 else torch.float32,
                         device=y.device)
    grid = (triton.cdiv(n, 64 * _K),)
    _dropout_add_kernel[grid](y, y if res is None else res, out, n, _threshold(p),
                              int(seed.reshape(-1)[0]), scale, HAS_RES=res is not None,
                              IS_F64=f64, K=_K, enable_fp_fusion=False)
    return out


def dropout_bwd(grad: torch.Tensor, p: float, seed: torch.Tensor) -> torch.Tensor:
    return dropout_fwd(grad, None, p, seed)
