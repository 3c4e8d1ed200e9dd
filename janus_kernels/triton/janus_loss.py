"""Triton kernels for the fused JANUS criterion rows: the GPU twin of csrc/cpu/janus_loss.cpp,
whose header comment states the math, the saved statistics and the special-value rules; these
kernels follow it term for term (same outputs, same stats layout, same NaN / zero-gradient
rules). Backend contract (janus_kernels/losses.py, ``_janus_terms_fused``)::

    janus_rows_fwd(ar, nar, aux, ar_t, m_t, idx, eps, ignore_index)
        -> (ar_loss (N,), masked_loss (M, 5), ar_stats (N, 2), masked_stats (M, 12))
    janus_rows_bwd(g_ar (N,), g_masked (M, 5), ar, nar, aux, ar_t, m_t, idx, ar_stats,
                   masked_stats, eps, ignore_index) -> (d_ar, d_nar, d_aux)

Losses and stats are float32 (float64 for float64 logits), gradients have the logits' dtype.

Claims. A valid masked row m (target != ignore_index) *claims* AR row idx[m]. The claims are
grouped per AR row on the device, without a host sync (no .item(), no data-dependent shape):
a stable argsort of key = idx (ignored rows get the sentinel key N) gives ORDER, a scatter-add
gives COUNT[r] and a cumsum OFFS[r], so the claims of r are ORDER[OFFS[r] : OFFS[r] + COUNT[r]]
in ascending masked-row order; the first one is the "first claim" of the C++ op. Ignored masked
rows are never read and get zero losses, stats and gradients.

Forward, grid (N + M,). Program r < N: if r has a claim m, the triple (a_r, n_m, x_m) in one
online pass over V (below), writing the AR CE of r and the five terms of m; otherwise the AR
cross entropy alone (``_ce_row_stats`` of loss.py), or zeros when r's target is ignored.
Program N + m: the triple of m (without the AR CE) only when m is an *extra* claim (its AR row
was claimed by an earlier masked row, i.e. ORDER[OFFS[idx[m]]] != m); zeros when m is ignored;
nothing otherwise. Extras thus run in parallel and write only their own masked row.

Online triple pass: running safe maxima (0 while a row is all -inf), and relative to them
Z_s = sum e_s, U_s = sum t_s and the six A_pq^{p,q} = sum e_{p|q} (t_p - t_q) of the C++ op
(t_s = s - m_s, e_s = exp(t_s); 0 * inf counts as 0). When a maximum grows, Z' = al Z,
A' = al (A + dc Z) with al = exp(m_old - m_new) of the summed side and dc = (m_p - m_q)_old -
(m_p - m_q)_new, U' = U + seen (m_old - m_new) (the symmetric-KL kernel's rescale, loss.py).
One read of each logit row, 3 exps per element triple.

Backward, grid (N + M, cdiv(V, BLOCK)). Program (r, j) < N owns the AR gradient block d_ar[r, j]:
it loads a_r's block once, forms its CE part, then walks *all* claims of r (first and extras),
adding each claim's KL terms into the AR block in registers (fp32 / fp64) and writing that
claim's NAR / AUX gradient blocks; d_ar is stored once, in the logits' dtype. Every gradient
element is written by exactly one program: no atomics, no fp32 side buffer, deterministic. A
row with c claims costs its programs c passes (duplicates never occur in JANUS batches; the
column split keeps even a heavily repeated row parallel over V). Programs N + m only write the
zero gradient rows of ignored masked rows. The a-side softmax of every claim uses ar_stats
(m_a, 1/Z_a): the forward writes the first claim's own a-stats there, and the extras' a-stats
come from the same code on the same row.

Bad inputs: on CPU tensors (the interpreter) out-of-range targets / AR row indices raise a
ValueError naming the argument; on CUDA they are not checked (that would need a host sync): an
out-of-range target gives a NaN loss for its CE term (like ``ce_fwd``), an out-of-range index
trips the scatter's device assert.

Plain pointers only (no block pointers, no libdevice): triton 3.6-3.9 and TRITON_INTERPRET=1.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from .loss import _acc, _block, _ce_row_stats, _finite, _param, _rows, _warps

__all__ = ["janus_rows_fwd", "janus_rows_bwd", "KERNELS"]

_M_TERMS, _M_STATS = 5, 12


@triton.jit
def _mul_nz(e, v):  # e * v, 0 where e == 0 (0 * inf counts as 0)
    return tl.where(e == 0, 0.0, e * v)


@triton.jit
def _triple_sums(ar, nr, xr, V, SMOOTH: tl.constexpr, IS_F64: tl.constexpr,
                 BLOCK: tl.constexpr):
    """One online pass over the AR, NAR and AUX rows at ar, nr, xr (module docstring):
    safe maxima, Z, U and the six A sums, all relative to the final maxima."""
    ACC = tl.float64 if IS_F64 else tl.float32
    offs = tl.arange(0, BLOCK)
    ninf = float("-inf")
    zero = tl.full([], 0.0, ACC)
    ra = tl.full([], ninf, ACC)  # raw running maxima
    rn = tl.full([], ninf, ACC)
    rx = tl.full([], ninf, ACC)
    ma, mn, mx = zero, zero, zero  # safe maxima
    za, zn, zx = zero, zero, zero
    ua, un, ux = zero, zero, zero
    an_a, an_n, ax_a, ax_x, nx_n, nx_x = zero, zero, zero, zero, zero, zero  # A_pq^p, A_pq^q
    for start in range(0, V, BLOCK):
        cols = start + offs
        inb = cols < V
        a = tl.load(ar + cols, mask=inb, other=ninf).to(ACC)
        n = tl.load(nr + cols, mask=inb, other=ninf).to(ACC)
        x = tl.load(xr + cols, mask=inb, other=ninf).to(ACC)
        ra = tl.maximum(ra, tl.max(a, 0))
        rn = tl.maximum(rn, tl.max(n, 0))
        rx = tl.maximum(rx, tl.max(x, 0))
        na = tl.where(ra == ninf, 0.0, ra).to(ACC)
        nn = tl.where(rn == ninf, 0.0, rn).to(ACC)
        nx = tl.where(rx == ninf, 0.0, rx).to(ACC)
        # re-base the sums on the new maxima (al = 0 while nothing finite was summed)
        al_a = tl.where(za > 0, tl.exp(ma - na), 0.0).to(ACC)
        al_n = tl.where(zn > 0, tl.exp(mn - nn), 0.0).to(ACC)
        al_x = tl.where(zx > 0, tl.exp(mx - nx), 0.0).to(ACC)
        dc_an = (ma - mn) - (na - nn)
        dc_ax = (ma - mx) - (na - nx)
        dc_nx = (mn - mx) - (nn - nx)
        an_a = al_a * (an_a + dc_an * za)
        an_n = al_n * (an_n + dc_an * zn)
        ax_a = al_a * (ax_a + dc_ax * za)
        ax_x = al_x * (ax_x + dc_ax * zx)
        nx_n = al_n * (nx_n + dc_nx * zn)
        nx_x = al_x * (nx_x + dc_nx * zx)
        za = al_a * za
        zn = al_n * zn
        zx = al_x * zx
        if SMOOTH:
            ua += (ma - na) * start
            un += (mn - nn) * start
            ux += (mx - nx) * start
        ma, mn, mx = na, nn, nx
        ta = a - ma
        tn = n - mn
        tx = x - mx
        ea = tl.exp(ta)
        en = tl.exp(tn)
        ex = tl.exp(tx)
        za += tl.sum(ea, 0)
        zn += tl.sum(en, 0)
        zx += tl.sum(ex, 0)
        if SMOOTH:
            ua += tl.sum(tl.where(inb, ta, 0.0), 0)
            un += tl.sum(tl.where(inb, tn, 0.0), 0)
            ux += tl.sum(tl.where(inb, tx, 0.0), 0)
        d_an = ta - tn
        d_ax = ta - tx
        d_nx = tn - tx
        an_a += tl.sum(_mul_nz(ea, d_an), 0)
        an_n += tl.sum(_mul_nz(en, d_an), 0)
        ax_a += tl.sum(_mul_nz(ea, d_ax), 0)
        ax_x += tl.sum(_mul_nz(ex, d_ax), 0)
        nx_n += tl.sum(_mul_nz(en, d_nx), 0)
        nx_x += tl.sum(_mul_nz(ex, d_nx), 0)
    return ma, za, ua, mn, zn, un, mx, zx, ux, an_a, an_n, ax_a, ax_x, nx_n, nx_x


@triton.jit
def _smoothed_ce(row, t, bad, m, z, u, V, eps, SMOOTH: tl.constexpr, IS_F64: tl.constexpr):
    """(1 - eps)(log Z - t_target) + eps (log Z - U / V); NaN for an out-of-range target."""
    ACC = tl.float64 if IS_F64 else tl.float32
    lz = tl.log(z)
    tt = tl.load(row + tl.where(bad, 0, t)).to(ACC) - m  # bad: never read out of bounds
    loss = (1.0 - eps) * (lz - tt)
    if SMOOTH:
        loss += eps * (lz - u / V)
    return tl.where(bad, float("nan"), loss)


@triton.jit
def _janus_fwd_kernel(A, NR, XR, TA, TM, IDX, ORDER, COUNT, OFFS, AR_LOSS, M_LOSS, AR_ST, M_ST,
                      stride_a, stride_n, stride_x, N, V, PARAM, ignore_index,
                      SMOOTH: tl.constexpr, IS_F64: tl.constexpr, BLOCK: tl.constexpr):
    ACC = tl.float64 if IS_F64 else tl.float32
    eps = tl.load(PARAM)
    pid = tl.program_id(0).to(tl.int64)
    is_ar = pid < N
    # masked-row program N + mm: its own row matters when ignored (zeros) or an extra claim
    mm = pid - N
    tm_own = tl.load(TM + mm, mask=~is_ar, other=ignore_index)
    own = (~is_ar) & (tm_own != ignore_index)
    r = tl.where(is_ar, pid, tl.load(IDX + mm, mask=own, other=0))
    cnt = tl.load(COUNT + r, mask=is_ar | own, other=0)
    off = tl.load(OFFS + r, mask=is_ar | own, other=0)
    first = tl.load(ORDER + off, mask=(is_ar & (cnt > 0)) | own, other=-1)
    m = tl.where(is_ar, first, tl.where(own & (first != mm), mm, -1))  # the triple's row, or -1
    ta = tl.load(TA + r, mask=is_ar, other=ignore_index)  # masked programs: no AR CE
    ce_a = ta != ignore_index
    bad_a = ce_a & ((ta < 0) | (ta >= V))  # out-of-range target: NaN loss (no device assert)
    a_row = A + r * stride_a
    zero = tl.full([], 0.0, ACC)
    if m >= 0:
        tm = tl.load(TM + m)
        bad_m = (tm < 0) | (tm >= V)
        n_row = NR + m * stride_n
        x_row = XR + m * stride_x
        ma, za, ua, mn, zn, un, mx, zx, ux, an_a, an_n, ax_a, ax_x, nx_n, nx_x = \
            _triple_sums(a_row, n_row, x_row, V, SMOOTH, IS_F64, BLOCK)
        ce_r = _smoothed_ce(a_row, ta, bad_a | (~ce_a), ma, za, ua, V, eps, SMOOTH, IS_F64)
        sp_an = an_a / za
        sq_an = an_n / zn
        sp_ax = ax_a / za
        sq_ax = ax_x / zx
        sp_nx = nx_n / zn
        sq_nx = nx_x / zx
        ml = M_LOSS + m * 5
        tl.store(ml + 0, _smoothed_ce(n_row, tm, bad_m, mn, zn, un, V, eps, SMOOTH, IS_F64))
        tl.store(ml + 1, _smoothed_ce(x_row, tm, bad_m, mx, zx, ux, V, eps, SMOOTH, IS_F64))
        tl.store(ml + 2, 0.5 * (sp_an - sq_an))
        tl.store(ml + 3, 0.5 * (sp_ax - sq_ax))
        tl.store(ml + 4, 0.5 * (sp_nx - sq_nx))
        ms = M_ST + m * 12
        tl.store(ms + 0, ma)
        tl.store(ms + 1, 1.0 / za)
        tl.store(ms + 2, mn)
        tl.store(ms + 3, 1.0 / zn)
        tl.store(ms + 4, mx)
        tl.store(ms + 5, 1.0 / zx)
        tl.store(ms + 6, sp_an)
        tl.store(ms + 7, sq_an)
        tl.store(ms + 8, sp_ax)
        tl.store(ms + 9, sq_ax)
        tl.store(ms + 10, sp_nx)
        tl.store(ms + 11, sq_nx)
        tl.store(AR_LOSS + r, tl.where(ce_a, ce_r, zero), mask=is_ar)
        tl.store(AR_ST + 2 * r, ma, mask=is_ar)
        tl.store(AR_ST + 2 * r + 1, 1.0 / za, mask=is_ar)
    else:
        # AR cross entropy alone (a masked program or an ignored target reads nothing)
        n_read = tl.where(ce_a & (~bad_a), V, 0)
        mc, zc, uc = _ce_row_stats(a_row, n_read, V, SMOOTH, IS_F64, BLOCK)
        ce_r = _smoothed_ce(a_row, ta, bad_a | (~ce_a), mc, zc, uc, V, eps, SMOOTH, IS_F64)
        tl.store(AR_LOSS + r, tl.where(ce_a, ce_r, zero), mask=is_ar)
        tl.store(AR_ST + 2 * r, tl.where(ce_a, mc, zero), mask=is_ar)
        tl.store(AR_ST + 2 * r + 1, tl.where(ce_a, 1.0 / zc, zero), mask=is_ar)
        ignored = (~is_ar) & (tm_own == ignore_index)
        k = tl.arange(0, 16)
        zeros = tl.zeros([16], ACC)
        tl.store(M_LOSS + mm * 5 + k, zeros, mask=ignored & (k < 5))
        tl.store(M_ST + mm * 12 + k, zeros, mask=ignored & (k < 12))


@triton.jit
def _janus_bwd_kernel(G_AR, G_M, A, NR, XR, TA, TM, ORDER, COUNT, OFFS, AR_ST, M_ST,
                      DA, DN, DX, stride_a, stride_n, stride_x, N, V, PARAM, ignore_index,
                      IS_F64: tl.constexpr, BLOCK: tl.constexpr):
    ACC = tl.float64 if IS_F64 else tl.float32
    eps = tl.load(PARAM)
    pid = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inb = cols < V
    nan = float("nan")
    if pid < N:
        r = pid
        ta = tl.load(TA + r)
        ce_a = ta != ignore_index
        cnt = tl.load(COUNT + r)
        off = tl.load(OFFS + r)
        ma = tl.load(AR_ST + 2 * r)
        iza = tl.load(AR_ST + 2 * r + 1)
        ca = tl.load(G_AR + r)
        e0 = eps / V
        # an AR row with an ignored target and no claim is not read (padding may hold NaN)
        a = tl.load(A + r * stride_a + cols, mask=inb & (ce_a | (cnt > 0)), other=0.0).to(ACC)
        t_a = a - ma
        pa = tl.exp(t_a) * iza
        ga = tl.where(ce_a, ca * (pa - e0 - tl.where(cols == ta, 1.0 - eps, 0.0)), 0.0).to(ACC)
        nan_a = cnt < 0  # False: becomes True when a KL on the AR row has an undefined gradient
        for k in range(0, cnt):
            m = tl.load(ORDER + off + k)
            tm = tl.load(TM + m)
            st = M_ST + m * 12
            mn = tl.load(st + 2)
            izn = tl.load(st + 3)
            mx = tl.load(st + 4)
            izx = tl.load(st + 5)
            sp_an = tl.load(st + 6)
            sq_an = tl.load(st + 7)
            sp_ax = tl.load(st + 8)
            sq_ax = tl.load(st + 9)
            sp_nx = tl.load(st + 10)
            sq_nx = tl.load(st + 11)
            gm = G_M + m * 5
            cn = tl.load(gm + 0)
            cx = tl.load(gm + 1)
            kan = 0.5 * tl.load(gm + 2)
            kax = 0.5 * tl.load(gm + 3)
            knx = 0.5 * tl.load(gm + 4)
            # a weighted KL with an infinite / undefined loss: NaN rows, term dropped
            bad_an = (kan != 0) & ~(_finite(sp_an - sq_an) & _finite(iza) & _finite(izn))
            bad_ax = (kax != 0) & ~(_finite(sp_ax - sq_ax) & _finite(iza) & _finite(izx))
            bad_nx = (knx != 0) & ~(_finite(sp_nx - sq_nx) & _finite(izn) & _finite(izx))
            kan = tl.where(bad_an, 0.0, kan)
            kax = tl.where(bad_ax, 0.0, kax)
            knx = tl.where(bad_nx, 0.0, knx)
            nan_a = nan_a | bad_an | bad_ax
            t_n = tl.load(NR + m * stride_n + cols, mask=inb, other=0.0).to(ACC) - mn
            t_x = tl.load(XR + m * stride_x + cols, mask=inb, other=0.0).to(ACC) - mx
            pn = tl.exp(t_n) * izn
            px = tl.exp(t_x) * izx
            d_an = t_a - t_n
            d_ax = t_a - t_x
            d_nx = t_n - t_x
            hot = tl.where(cols == tm, 1.0 - eps, 0.0)
            # a zero upstream gradient leaves its term out entirely (inf * 0 never reaches it)
            ga += tl.where(kan != 0, kan * (_mul_nz(pa, d_an - sp_an + 1.0) - pn), 0.0)
            ga += tl.where(kax != 0, kax * (_mul_nz(pa, d_ax - sp_ax + 1.0) - px), 0.0)
            gn = cn * (pn - e0 - hot)
            gn += tl.where(kan != 0, kan * (_mul_nz(pn, sq_an + 1.0 - d_an) - pa), 0.0)
            gn += tl.where(knx != 0, knx * (_mul_nz(pn, d_nx - sp_nx + 1.0) - px), 0.0)
            gx = cx * (px - e0 - hot)
            gx += tl.where(kax != 0, kax * (_mul_nz(px, sq_ax + 1.0 - d_ax) - pa), 0.0)
            gx += tl.where(knx != 0, knx * (_mul_nz(px, sq_nx + 1.0 - d_nx) - pn), 0.0)
            gn = tl.where(bad_an | bad_nx, nan, gn)
            gx = tl.where(bad_ax | bad_nx, nan, gx)
            tl.store(DN + m * V + cols, gn.to(DN.dtype.element_ty), mask=inb)
            tl.store(DX + m * V + cols, gx.to(DX.dtype.element_ty), mask=inb)
        ga = tl.where(nan_a, nan, ga)
        tl.store(DA + r * V + cols, ga.to(DA.dtype.element_ty), mask=inb)
    else:
        mm = pid - N  # ignored masked rows: zero gradients (no AR program walks them)
        ign = tl.load(TM + mm) == ignore_index
        zeros = tl.zeros([BLOCK], ACC)
        tl.store(DN + mm * V + cols, zeros.to(DN.dtype.element_ty), mask=inb & ign)
        tl.store(DX + mm * V + cols, zeros.to(DX.dtype.element_ty), mask=inb & ign)


KERNELS = {"janus_fwd": _janus_fwd_kernel, "janus_bwd": _janus_bwd_kernel}

# ------------------------------------------------------------------------- launchers
# Three rows per iteration: half the single-row kernels' forward block keeps the live
# registers per thread the same (AOT check: no spills on sm_80 / sm_90).
_FWD_BLOCK = 2048
_BWD_BLOCK = 1024


def _check(ar, nar, aux, ar_t, m_t, idx, ignore_index):
    for name, t in (("ar_logits", ar), ("nar_logits", nar), ("aux_logits", aux)):
        if t.dim() != 2 or t.shape[1] == 0:
            raise ValueError(f"janus_rows: {name} must be a 2-D (rows, vocab) tensor with a "
                             f"non-empty vocabulary, got shape {tuple(t.shape)}")
    if nar.shape != aux.shape or ar.shape[1] != nar.shape[1]:
        raise ValueError(f"janus_rows: nar_logits/aux_logits must be (M, {ar.shape[1]}) like "
                         f"each other, got {tuple(nar.shape)} and {tuple(aux.shape)}")
    if not ar.dtype == nar.dtype == aux.dtype:
        raise TypeError(f"janus_rows: ar_logits, nar_logits and aux_logits must share a dtype, "
                        f"got {ar.dtype}, {nar.dtype}, {aux.dtype}")
    N, M, V = ar.shape[0], nar.shape[0], ar.shape[1]
    for name, t, R in (("ar_targets", ar_t, N), ("masked_targets", m_t, M), ("ar_kl_rows", idx, M)):
        if t.shape != (R,) or t.dtype != torch.int64 or t.device != ar.device:
            raise ValueError(f"janus_rows: {name} must be an int64 ({R},) tensor on {ar.device}, "
                             f"got {t.dtype} {tuple(t.shape)} on {t.device}")
    if N == 0 and M > 0:
        raise ValueError("janus_rows: ar_kl_rows: masked rows need AR rows, got N_ar = 0")
    if ar.device.type == "cpu":  # free on CPU; on CUDA it would need a host sync
        for name, t, hi in (("ar_targets", ar_t, V), ("masked_targets", m_t, V)):
            if bool(((t != ignore_index) & ((t < 0) | (t >= hi))).any()):
                raise ValueError(f"janus_rows: {name} has values outside [0, {V}) that are not "
                                 f"ignore_index ({ignore_index})")
        if M and bool(((idx < 0) | (idx >= N)).any()):
            raise ValueError(f"janus_rows: ar_kl_rows has values outside [0, {N}) (AR rows)")


def _claims(idx: torch.Tensor, m_t: torch.Tensor, N: int, ignore_index: int):
    """(ORDER, COUNT, OFFS): the valid masked rows grouped by AR row in ascending order (see
    the module docstring); on the device, no host sync."""
    key = torch.where(m_t != ignore_index, idx, N)  # ignored rows: sentinel bucket N
    order = torch.argsort(key, stable=True)
    count = torch.zeros(N + 1, dtype=torch.int32, device=idx.device)
    count.scatter_add_(0, key, torch.ones_like(key, dtype=torch.int32))
    offs = torch.cumsum(count, 0) - count
    return order, count, offs


def janus_rows_fwd(ar: torch.Tensor, nar: torch.Tensor, aux: torch.Tensor,
                   ar_t: torch.Tensor, m_t: torch.Tensor, idx: torch.Tensor, eps: float,
                   ignore_index: int, block: Optional[int] = None
                   ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """AR CE per AR row; CE(NAR), CE(AUX), KLs(AR, NAR), KLs(AR, AUX), KLs(NAR, AUX) per
    masked row; plus the saved stats (layout of csrc/cpu/janus_loss.cpp)."""
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"janus_rows: label_smoothing must be in [0, 1], got {eps}")
    ar, nar, aux = _rows(ar), _rows(nar), _rows(aux)
    ar_t, m_t, idx = ar_t.contiguous(), m_t.contiguous(), idx.contiguous()
    _check(ar, nar, aux, ar_t, m_t, idx, ignore_index)
    (N, V), M = ar.shape, nar.shape[0]
    ct = _acc(ar.dtype)
    ar_loss = torch.empty(N, dtype=ct, device=ar.device)
    m_loss = torch.empty(M, _M_TERMS, dtype=ct, device=ar.device)
    ar_st = torch.empty(N, 2, dtype=ct, device=ar.device)
    m_st = torch.empty(M, _M_STATS, dtype=ct, device=ar.device)
    if N + M == 0:
        return ar_loss, m_loss, ar_st, m_st
    order, count, offs = _claims(idx, m_t, N, ignore_index)
    bl = block or _block(V, _FWD_BLOCK)
    _janus_fwd_kernel[(N + M,)](ar, nar, aux, ar_t, m_t, idx, order, count, offs, ar_loss,
                                m_loss, ar_st, m_st, ar.stride(0), nar.stride(0), aux.stride(0),
                                N, V, _param(eps, ar), ignore_index, SMOOTH=eps > 0,
                                IS_F64=ct == torch.float64, BLOCK=bl, num_warps=_warps(bl))
    return ar_loss, m_loss, ar_st, m_st


def janus_rows_bwd(g_ar: torch.Tensor, g_m: torch.Tensor, ar: torch.Tensor, nar: torch.Tensor,
                   aux: torch.Tensor, ar_t: torch.Tensor, m_t: torch.Tensor, idx: torch.Tensor,
                   ar_st: torch.Tensor, m_st: torch.Tensor, eps: float, ignore_index: int,
                   block: Optional[int] = None
                   ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of sum g_ar * ar_loss + sum g_m * masked_loss w.r.t. the three logits (the
    formulas of csrc/cpu/janus_loss.cpp); a zero entry of g_m drops its term."""
    ar, nar, aux = _rows(ar), _rows(nar), _rows(aux)
    ar_t, m_t, idx = ar_t.contiguous(), m_t.contiguous(), idx.contiguous()
    _check(ar, nar, aux, ar_t, m_t, idx, ignore_index)
    (N, V), M = ar.shape, nar.shape[0]
    ct = _acc(ar.dtype)
    for name, t, shape in (("grad_ar", g_ar, (N,)), ("grad_masked", g_m, (M, _M_TERMS)),
                           ("ar_stats", ar_st, (N, 2)), ("masked_stats", m_st, (M, _M_STATS))):
        if t.shape != shape or t.dtype != ct:
            raise ValueError(f"janus_rows: {name} must be {ct} of shape {shape}, got {t.dtype} "
                             f"{tuple(t.shape)}")
    da = torch.empty((N, V), dtype=ar.dtype, device=ar.device)
    dn = torch.empty((M, V), dtype=ar.dtype, device=ar.device)
    dx = torch.empty((M, V), dtype=ar.dtype, device=ar.device)
    if N + M == 0:
        return da, dn, dx
    order, count, offs = _claims(idx, m_t, N, ignore_index)
    bl = block or _block(V, _BWD_BLOCK)
    grid = (N + M, triton.cdiv(V, bl))
    _janus_bwd_kernel[grid](g_ar.contiguous(), g_m.contiguous(), ar, nar, aux, ar_t, m_t, order,
                            count, offs, ar_st.contiguous(), m_st.contiguous(), da, dn, dx,
                            ar.stride(0), nar.stride(0), aux.stride(0), N, V, _param(eps, ar),
                            ignore_index, IS_F64=ct == torch.float64, BLOCK=bl,
                            num_warps=_warps(bl))
    return da, dn, dx
