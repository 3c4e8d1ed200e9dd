"""Triton kernels for the fused row losses (same math, saved statistics and special-value
rules as csrc/cpu/loss.cpp; see janus_kernels/losses.py for the formulas).

Forward: one program per row, an online pass over V in BLOCK-sized pieces keeping running
maxima and sums as scalars. The symmetric KL accumulates A = sum e^{x'-m_x} (d - c) with the
shift c = m_x - m_y, so d - c = (x' - m_x) - (y' - m_y) is formed from the exp arguments and
stays exact for large logits; when a running max grows the sums are rescaled and re-shifted
(sum e (d - c_new) = A + (c_old - c_new) Z). Backward: a 2-D grid (row, column block) that
recomputes p and q from the logits and the saved per-row statistics.

Plain pointers only (no block pointers, no libdevice) so the kernels run on triton 3.6-3.9 and
under TRITON_INTERPRET=1 on CPU tensors.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

__all__ = ["symkl_fwd", "symkl_bwd", "ce_fwd", "ce_bwd", "KERNELS"]


@triton.jit
def _finite(v):
    return (v == v) & (v != float("inf")) & (v != float("-inf"))


@triton.jit
def _symkl_fwd_kernel(X, Y, MASK, LOSS, STATS, stride_x, stride_y, V, PARAM,
                      HAS_MASK: tl.constexpr, IS_F64: tl.constexpr, BLOCK: tl.constexpr):
    ACC = tl.float64 if IS_F64 else tl.float32
    inv_t = tl.load(PARAM)  # float scalars come in ACC precision (fp64 stays exact)
    row = tl.program_id(0)
    n = V
    keep = True
    if HAS_MASK:
        keep = tl.load(MASK + row) != 0
        n = tl.where(keep, V, 0)  # an unselected row is never read
    xr = X + row.to(tl.int64) * stride_x
    yr = Y + row.to(tl.int64) * stride_y
    offs = tl.arange(0, BLOCK)
    ninf = float("-inf")
    mx_raw = tl.full([], ninf, ACC)
    my_raw = tl.full([], ninf, ACC)
    mx = tl.full([], 0.0, ACC)  # "safe" maxima: 0 while every value seen is -inf
    my = tl.full([], 0.0, ACC)
    zx = tl.full([], 0.0, ACC)
    ax = tl.full([], 0.0, ACC)
    zy = tl.full([], 0.0, ACC)
    ay = tl.full([], 0.0, ACC)
    for start in range(0, n, BLOCK):
        cols = start + offs
        inb = cols < V
        x = tl.load(xr + cols, mask=inb, other=ninf).to(ACC) * inv_t
        y = tl.load(yr + cols, mask=inb, other=ninf).to(ACC) * inv_t
        mx_raw = tl.maximum(mx_raw, tl.max(x, 0))
        my_raw = tl.maximum(my_raw, tl.max(y, 0))
        nmx = tl.where(mx_raw == ninf, 0.0, mx_raw).to(ACC)
        nmy = tl.where(my_raw == ninf, 0.0, my_raw).to(ACC)
        dc = (mx - my) - (nmx - nmy)
        alx = tl.where(zx > 0, tl.exp(mx - nmx), 0.0).to(ACC)
        aly = tl.where(zy > 0, tl.exp(my - nmy), 0.0).to(ACC)
        ax = alx * (ax + dc * zx)
        ay = aly * (ay + dc * zy)
        zx = alx * zx
        zy = aly * zy
        mx = nmx
        my = nmy
        tx = x - mx
        ty = y - my
        ex = tl.exp(tx)
        ey = tl.exp(ty)
        d = tx - ty
        zx += tl.sum(ex, 0)
        zy += tl.sum(ey, 0)
        # 0 * inf counts as 0: entries that are -inf on the exp side (padding lanes too)
        ax += tl.sum(tl.where(ex == 0, 0.0, ex * d), 0)
        ay += tl.sum(tl.where(ey == 0, 0.0, ey * d), 0)
    sp = ax / zx
    sq = ay / zy
    zero = tl.full([], 0.0, ACC)
    tl.store(LOSS + row, tl.where(keep, 0.5 * (sp - sq), zero))
    st = STATS + row.to(tl.int64) * 6
    tl.store(st + 0, tl.where(keep, mx, zero))
    tl.store(st + 1, tl.where(keep, 1.0 / zx, zero))
    tl.store(st + 2, tl.where(keep, my, zero))
    tl.store(st + 3, tl.where(keep, 1.0 / zy, zero))
    tl.store(st + 4, tl.where(keep, sp, zero))
    tl.store(st + 5, tl.where(keep, sq, zero))


@triton.jit
def _symkl_bwd_kernel(G, X, Y, STATS, MASK, DX, DY, stride_x, stride_y, V, PARAM,
                      HAS_MASK: tl.constexpr, IS_F64: tl.constexpr, BLOCK: tl.constexpr):
    ACC = tl.float64 if IS_F64 else tl.float32
    inv_t = tl.load(PARAM)
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    keep = True
    if HAS_MASK:
        keep = tl.load(MASK + row) != 0
    ld = (cols < V) & keep
    st = STATS + row.to(tl.int64) * 6
    mx = tl.load(st + 0)
    izx = tl.load(st + 1)
    my = tl.load(st + 2)
    izy = tl.load(st + 3)
    sp = tl.load(st + 4)
    sq = tl.load(st + 5)
    a = 0.5 * inv_t * tl.load(G + row)
    tx = tl.load(X + row.to(tl.int64) * stride_x + cols, mask=ld, other=0.0).to(ACC) * inv_t - mx
    ty = tl.load(Y + row.to(tl.int64) * stride_y + cols, mask=ld, other=0.0).to(ACC) * inv_t - my
    p = tl.exp(tx) * izx
    q = tl.exp(ty) * izy
    d = tx - ty
    gx = a * (tl.where(p == 0, 0.0, p * (d - sp + 1.0)) - q)
    gy = a * (tl.where(q == 0, 0.0, q * (1.0 + sq - d)) - p)
    # infinite / undefined loss rows: the gradient is undefined -> NaN
    ok = _finite(sp - sq) & _finite(izx) & _finite(izy)  # 1/Z >= 0: never -inf
    gx = tl.where(ok, gx, float("nan"))
    gy = tl.where(ok, gy, float("nan"))
    gx = tl.where(keep, gx, 0.0)
    gy = tl.where(keep, gy, 0.0)
    out = row.to(tl.int64) * V + cols
    tl.store(DX + out, gx.to(DX.dtype.element_ty), mask=cols < V)
    tl.store(DY + out, gy.to(DY.dtype.element_ty), mask=cols < V)


@triton.jit
def _ce_row_stats(xr, n, V, SMOOTH: tl.constexpr, IS_F64: tl.constexpr, BLOCK: tl.constexpr):
    """Online pass over the first n (0 or V) entries of the row at xr: the safe max m (0 while
    every value seen is -inf), z = sum e^{x-m} and (SMOOTH) u = sum (x - m). Shared with the
    fused JANUS rows kernel (janus_loss.py)."""
    ACC = tl.float64 if IS_F64 else tl.float32
    offs = tl.arange(0, BLOCK)
    ninf = float("-inf")
    m_raw = tl.full([], ninf, ACC)
    m = tl.full([], 0.0, ACC)
    z = tl.full([], 0.0, ACC)
    u = tl.full([], 0.0, ACC)  # sum of (x - m) over the entries seen, for the smoothing term
    for start in range(0, n, BLOCK):
        cols = start + offs
        inb = cols < V
        x = tl.load(xr + cols, mask=inb, other=ninf).to(ACC)
        m_raw = tl.maximum(m_raw, tl.max(x, 0))
        nm = tl.where(m_raw == ninf, 0.0, m_raw).to(ACC)
        z = tl.where(z > 0, z * tl.exp(m - nm), 0.0).to(ACC)
        if SMOOTH:
            u += (m - nm) * start  # re-shift the entries seen so far
        m = nm
        tt = x - m
        z += tl.sum(tl.exp(tt), 0)
        if SMOOTH:
            u += tl.sum(tl.where(inb, tt, 0.0), 0)
    return m, z, u


@triton.jit
def _ce_fwd_kernel(X, T, LOSS, STATS, stride_x, V, PARAM, ignore_index,
                   SMOOTH: tl.constexpr, IS_F64: tl.constexpr, BLOCK: tl.constexpr):
    ACC = tl.float64 if IS_F64 else tl.float32
    eps = tl.load(PARAM)
    row = tl.program_id(0)
    t = tl.load(T + row)
    valid = t != ignore_index
    bad = valid & ((t < 0) | (t >= V))  # out-of-range target: NaN loss (no device assert)
    n = tl.where(valid & (~bad), V, 0)
    xr = X + row.to(tl.int64) * stride_x
    m, z, u = _ce_row_stats(xr, n, V, SMOOTH, IS_F64, BLOCK)
    logz = tl.log(z)
    ts = tl.where(valid & (~bad), t, 0)
    ut = tl.load(xr + ts).to(ACC) - m
    loss = (1.0 - eps) * (logz - ut)
    if SMOOTH:
        loss += eps * (logz - u / V)
    zero = tl.full([], 0.0, ACC)
    loss = tl.where(bad, float("nan"), loss)
    tl.store(LOSS + row, tl.where(valid, loss, zero))
    st = STATS + row.to(tl.int64) * 2
    tl.store(st + 0, tl.where(valid, m, zero))
    tl.store(st + 1, tl.where(valid, 1.0 / z, zero))


@triton.jit
def _ce_bwd_kernel(G, X, T, STATS, DX, stride_x, V, PARAM, ignore_index,
                   IS_F64: tl.constexpr, BLOCK: tl.constexpr):
    ACC = tl.float64 if IS_F64 else tl.float32
    eps = tl.load(PARAM)
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    t = tl.load(T + row)
    valid = t != ignore_index
    ld = (cols < V) & valid
    m = tl.load(STATS + row.to(tl.int64) * 2)
    iz = tl.load(STATS + row.to(tl.int64) * 2 + 1)
    g = tl.load(G + row)
    x = tl.load(X + row.to(tl.int64) * stride_x + cols, mask=ld, other=0.0).to(ACC)
    p = tl.exp(x - m) * iz
    # the target entry is formed in the accumulation precision before the final cast
    dx = g * (p - eps / V - tl.where(cols == t, 1.0 - eps, 0.0))
    dx = tl.where(valid, dx, 0.0)
    tl.store(DX + row.to(tl.int64) * V + cols, dx.to(DX.dtype.element_ty), mask=cols < V)


KERNELS = {"symkl_fwd": _symkl_fwd_kernel, "symkl_bwd": _symkl_bwd_kernel,
           "ce_fwd": _ce_fwd_kernel, "ce_bwd": _ce_bwd_kernel}

# ------------------------------------------------------------------------- launchers
_FWD_BLOCK = 4096  # elements per forward iteration (GPU); the interpreter can take less
_BWD_BLOCK = 2048


def _block(V: int, cap: int) -> int:
    return max(16, min(cap, triton.next_power_of_2(V)))


def _warps(block: int) -> int:
    return 4 if block <= 1024 else 8


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t if t.shape[1] == 1 or t.stride(1) == 1 else t.contiguous()


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _param(value: float, like: torch.Tensor) -> torch.Tensor:
    # Python floats reach a Triton kernel as fp32; pass the scalar as a one-element tensor of
    # the accumulation dtype instead (fp64 inputs keep full precision).
    return torch.full((1,), value, dtype=_acc(like.dtype), device=like.device)


def symkl_fwd(x: torch.Tensor, y: torch.Tensor, row_mask: Optional[torch.Tensor],
              inv_t: float, block: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    x, y = _rows(x), _rows(y)
    R, V = x.shape
    ct = _acc(x.dtype)
    loss = torch.empty(R, dtype=ct, device=x.device)
    stats = torch.empty(R, 6, dtype=ct, device=x.device)
    if R == 0:
        return loss, stats
    bl = block or _block(V, _FWD_BLOCK)
    mask = row_mask.contiguous().view(torch.uint8) if row_mask is not None else x
    _symkl_fwd_kernel[(R,)](x, y, mask, loss, stats, x.stride(0), y.stride(0), V, _param(inv_t, x),
                            HAS_MASK=row_mask is not None, IS_F64=ct == torch.float64,
                            BLOCK=bl, num_warps=_warps(bl))
    return loss, stats


def symkl_bwd(grad: torch.Tensor, x: torch.Tensor, y: torch.Tensor, stats: torch.Tensor,
              row_mask: Optional[torch.Tensor], inv_t: float, block: Optional[int] = None
              ) -> Tuple[torch.Tensor, torch.Tensor]:
    x, y = _rows(x), _rows(y)
    R, V = x.shape
    dx = torch.empty((R, V), dtype=x.dtype, device=x.device)
    dy = torch.empty((R, V), dtype=y.dtype, device=y.device)
    if R == 0:
        return dx, dy
    bl = block or _block(V, _BWD_BLOCK)
    mask = row_mask.contiguous().view(torch.uint8) if row_mask is not None else x
    grid = (R, triton.cdiv(V, bl))
    _symkl_bwd_kernel[grid](grad.contiguous(), x, y, stats.contiguous(), mask, dx, dy,
                            x.stride(0), y.stride(0), V, _param(inv_t, x),
                            HAS_MASK=row_mask is not None, IS_F64=x.dtype == torch.float64,
                            BLOCK=bl, num_warps=_warps(bl))
    return dx, dy


def ce_fwd(x: torch.Tensor, target: torch.Tensor, eps: float, ignore_index: int,
           block: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    x = _rows(x)
    R, V = x.shape
    ct = _acc(x.dtype)
    loss = torch.empty(R, dtype=ct, device=x.device)
    stats = torch.empty(R, 2, dtype=ct, device=x.device)
    if R == 0:
        return loss, stats
    bl = block or _block(V, _FWD_BLOCK)
    _ce_fwd_kernel[(R,)](x, target.contiguous(), loss, stats, x.stride(0), V, _param(eps, x),
                         ignore_index, SMOOTH=eps > 0, IS_F64=ct == torch.float64, BLOCK=bl,
                         num_warps=_warps(bl))
    return loss, stats


def ce_bwd(grad: torch.Tensor, x: torch.Tensor, target: torch.Tensor, stats: torch.Tensor,
           eps: float, ignore_index: int, block: Optional[int] = None) -> torch.Tensor:
    x = _rows(x)
    R, V = x.shape
    dx = torch.empty((R, V), dtype=x.dtype, device=x.device)
    if R == 0:
        return dx
    bl = block or _block(V, _BWD_BLOCK)
    _ce_bwd_kernel[(R, triton.cdiv(V, bl))](grad.contiguous(), x, target.contiguous(),
                                            stats.contiguous(), dx, x.stride(0), V, _param(eps, x),
                                            ignore_index, IS_F64=x.dtype == torch.float64,
                                            BLOCK=bl, num_warps=_warps(bl))
    return dx
