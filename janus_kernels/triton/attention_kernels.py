"""The @triton.jit attention kernels: forward (online softmax), the backward's delta
preprocess, dK/dV per key tile and dQ per row tile. The math is in the docstring of
janus_kernels/triton/attention.py, which launches them."""
import triton
import triton.language as tl

from . import mask as jm
from . import score_mods as sm
from .attention_tiles import (_LN2, _LOG2E, _VARYING, _dot, _dot_acc, _key_tile, _load_tile,
                              _mask_scores, _program_rows, _row_ranks, _row_tile_keys)

# ============================================================================ forward
@triton.jit
def _fwd_step(acc, m_i, l_i, q, n, K_bh, V_bh, stride_kn, stride_kd, stride_vn, stride_vd,
              offs_d, offs_r, offs_i, r0, r1, Lk, kv, pre, rows, off, hmin, width, ks,
              rank_b, rank_r, row_min, row_max, qk_scale, bh, drop_thr, seed_lo, seed_hi,
              Lq, scale, softcap, inv_softcap, rel_h, rel_len,
              D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              KIND: tl.constexpr, DROPOUT: tl.constexpr, TF32: tl.constexpr,
              HAS_SOFTCAP: tl.constexpr, HAS_REL_BIAS: tl.constexpr):
    """Online-softmax update of a row tile with key tile n: rescale the running (acc, l) by
    2^(m_old - m_new) and add this tile's 2^(s - m_new) (dropped entries only leave acc)."""
    j0, j1, offs_j, k, v, rank_j = _key_tile(n, K_bh, V_bh, stride_kn, stride_kd, stride_vn,
                                             stride_vd, offs_d, rank_b, Lk, kv, KIND,
                                             BLOCK_N, D)
    s, _ = sm.score_tile(_dot(q, tl.trans(k), TF32), offs_i, offs_j, Lq, qk_scale, scale,
                         softcap, inv_softcap, rel_h, rel_len, HAS_SOFTCAP, HAS_REL_BIAS, False)
    s, cls = _mask_scores(s, offs_r, offs_j, r0, r1, j0, j1, kv, pre, rows, off, hmin, width,
                          ks, rank_r, rank_j, row_min, row_max, KIND, False)
    if cls != jm.TILE_SKIP:  # only the permutation kind has dead tiles inside its range
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing seen yet
        p = tl.math.exp2(s - m_use[:, None])
        alpha = tl.math.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        if DROPOUT:
            keep = jm.dropout_keep(seed_lo, seed_hi, bh, offs_i, j0, drop_thr, BLOCK_M, BLOCK_N)
            p = tl.where(keep, p, 0.0)
        acc = _dot_acc(p.to(v.dtype), v, acc * alpha[:, None], TF32)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit(do_not_specialize=_VARYING)
def _attn_fwd(Q, K, V, O, LSE, PARAMS, RANK, REL,
              stride_qb, stride_qh, stride_qm, stride_qd,
              stride_kb, stride_kh, stride_kn, stride_kd,
              stride_vb, stride_vh, stride_vn, stride_vd,
              stride_ob, stride_oh, stride_om, stride_od,
              stride_rank, H, G, Lq, Lk, q_split, qk_scale, keep_scale,
              drop_thr, seed_lo, seed_hi, scale, softcap, inv_softcap, rel_len,
              D: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr,
              BLOCK_N: tl.constexpr, KIND: tl.constexpr, DROPOUT: tl.constexpr, TF32: tl.constexpr,
              HAS_SOFTCAP: tl.constexpr, HAS_REL_BIAS: tl.constexpr):
    # accumulate in float64 for float64 inputs (gradcheck), else float32
    ACC: tl.constexpr = tl.float64 if Q.dtype.element_ty == tl.float64 else tl.float32
    b, h, hk, s_id, r0, r1, seg_start, seg_len, kv, pre, rows, off, hmin, width = \
        _program_rows(PARAMS, H, G, Lq, Lk, q_split, BLOCK_M)
    bh = tl.program_id(0)
    offs_m = tl.arange(0, BLOCK_M)
    offs_r = r0 + offs_m
    offs_i = seg_start + offs_r
    offs_d = tl.arange(0, D_PAD)
    b64 = b.to(tl.int64)
    row0 = (seg_start + r0).to(tl.int64)
    q = _load_tile(Q + b64 * stride_qb + h.to(tl.int64) * stride_qh + row0 * stride_qm,
                   offs_m, seg_len - r0, stride_qm, offs_d, stride_qd, D)
    K_bh = K + b64 * stride_kb + hk.to(tl.int64) * stride_kh
    V_bh = V + b64 * stride_vb + hk.to(tl.int64) * stride_vh
    rank_b, rank_r, row_min, row_max, ks, n_pre, n_lo, n_hi = _row_tile_keys(
        RANK + b64 * stride_rank, PARAMS, b, offs_r, r0, r1, seg_start, Lq, Lk, kv, pre, rows,
        off, hmin, width, KIND, BLOCK_N)
    rel_h = REL + h.to(tl.int64) * rel_len

    acc = tl.zeros([BLOCK_M, D_PAD], dtype=ACC)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=ACC)
    l_i = tl.zeros([BLOCK_M], dtype=ACC)
    for n in range(0, n_pre):
        acc, m_i, l_i = _fwd_step(acc, m_i, l_i, q, n, K_bh, V_bh, stride_kn, stride_kd,
                                  stride_vn, stride_vd, offs_d, offs_r, offs_i, r0, r1, Lk,
                                  kv, pre, rows, off, hmin, width, ks, rank_b, rank_r, row_min,
                                  row_max, qk_scale, bh, drop_thr, seed_lo, seed_hi,
                                  Lq, scale, softcap, inv_softcap, rel_h, rel_len,
                                  D, BLOCK_M, BLOCK_N, KIND, DROPOUT, TF32,
                                  HAS_SOFTCAP, HAS_REL_BIAS)
    for n in range(n_lo, n_hi):
        acc, m_i, l_i = _fwd_step(acc, m_i, l_i, q, n, K_bh, V_bh, stride_kn, stride_kd,
                                  stride_vn, stride_vd, offs_d, offs_r, offs_i, r0, r1, Lk,
                                  kv, pre, rows, off, hmin, width, ks, rank_b, rank_r, row_min,
                                  row_max, qk_scale, bh, drop_thr, seed_lo, seed_hi,
                                  Lq, scale, softcap, inv_softcap, rel_h, rel_len,
                                  D, BLOCK_M, BLOCK_N, KIND, DROPOUT, TF32,
                                  HAS_SOFTCAP, HAS_REL_BIAS)

    seen = l_i > 0
    l_safe = tl.where(seen, l_i, 1.0)
    out = acc / l_safe[:, None]
    if DROPOUT:
        out = out * keep_scale
    lse = tl.where(seen, (m_i + tl.math.log2(l_safe)) * _LN2, float("-inf"))
    row_in = offs_m < seg_len - r0
    o_ptr = O + b64 * stride_ob + h.to(tl.int64) * stride_oh + row0 * stride_om
    tl.store(o_ptr + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od,
             out.to(O.dtype.element_ty), mask=row_in[:, None] & (offs_d[None, :] < D))
    tl.store(LSE + bh.to(tl.int64) * Lq + offs_i, lse.to(tl.float32), mask=row_in)


# =========================================================================== backward
@triton.jit
def _bwd_preprocess(O, DO, DELTA, stride_ob, stride_oh, stride_om, stride_od,
                    stride_dob, stride_doh, stride_dom, stride_dod, H, Lq,
                    D: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr):
    """delta[b, h, i] = sum_d dO[b, h, i, d] * O[b, h, i, d] (in the accumulator dtype)."""
    pid = tl.program_id(1)
    bh = tl.program_id(0)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    o = _load_tile(O + b * stride_ob + h * stride_oh, offs_m, Lq, stride_om, offs_d,
                   stride_od, D)
    do = _load_tile(DO + b * stride_dob + h * stride_doh, offs_m, Lq, stride_dom, offs_d,
                    stride_dod, D)
    delta = tl.sum(o.to(DELTA.dtype.element_ty) * do.to(DELTA.dtype.element_ty), 1)
    tl.store(DELTA + bh.to(tl.int64) * Lq + offs_m, delta, mask=offs_m < Lq)


@triton.jit
def _bwd_probs(q, k, do, v, lse, delta, qk_scale, keep_scale, offs_r, offs_i, offs_j,
               r0, r1, j0, j1, kv, pre, rows, off, hmin, width, ks, rank_r, rank_j,
               row_min, row_max, bh, drop_thr, seed_lo, seed_hi,
               Lq, scale, softcap, inv_softcap, rel_h, rel_len,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, KIND: tl.constexpr,
               DROPOUT: tl.constexpr, TF32: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
               HAS_REL_BIAS: tl.constexpr):
    """Recompute a (rows x keys) tile for dQ: p = 2^(s - lse log2 e), p * z (the dropped
    probabilities) and dS = p * (dP - delta) with dP = z * (dO . v), taken back through the
    softcap (the gradient w.r.t. the scaled dot)."""
    s, t = sm.score_tile(_dot(q, tl.trans(k), TF32), offs_i, offs_j, Lq, qk_scale, scale,
                         softcap, inv_softcap, rel_h, rel_len, HAS_SOFTCAP, HAS_REL_BIAS, False)
    s, cls = _mask_scores(s, offs_r, offs_j, r0, r1, j0, j1, kv, pre, rows, off, hmin, width,
                          ks, rank_r, rank_j, row_min, row_max, KIND, False)
    # lse = -inf only on rows that see no key, whose scores are all -inf: use 0 there so
    # exp2(-inf - 0) = 0 instead of NaN.
    lse2 = tl.where(lse == float("-inf"), 0.0, lse * _LOG2E)
    p = tl.math.exp2(s - lse2[:, None])
    dp = _dot(do, tl.trans(v), TF32)
    pz = p
    if DROPOUT:
        keep = jm.dropout_keep(seed_lo, seed_hi, bh, offs_i, j0, drop_thr, BLOCK_M, BLOCK_N)
        pz = tl.where(keep, p * keep_scale, 0.0)
        dp = tl.where(keep, dp * keep_scale, 0.0)
    ds = sm.pre_softcap_grad(p * (dp - delta[:, None]), t, HAS_SOFTCAP)
    return pz, ds, cls


@triton.jit
def _dkdv_step(dk, dv, k, v, q_ptr, do_ptr, stride_qm, stride_qd, stride_dom, stride_dod,
               lse_ptr, delta_ptr, n_rows, offs_m, offs_d, offs_r, offs_j, r0, r1, j0, j1,
               kv, pre, rows, off, hmin, width, ks, rank_b, rank_j, qk_scale, keep_scale, bh,
               drop_thr, seed_lo, seed_hi, seg_start, Lk, Lq, scale, softcap, inv_softcap,
               rel_h, drel_h, rel_len, D: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, KIND: tl.constexpr,
               DROPOUT: tl.constexpr, TF32: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
               HAS_REL_BIAS: tl.constexpr):
    """One query tile's contribution to dK/dV, computed transposed (keys x rows) so k and v
    are the left MMA operands and no probability tile needs a register transpose:
    sT = k qT, pT = 2^(sT - lse), dV += (pT z) dO, dK += (pT (z dPT - delta)) q."""
    row_in = offs_m < n_rows
    qT = tl.load(q_ptr + offs_d[:, None] * stride_qd + offs_m[None, :] * stride_qm,
                 mask=(offs_d[:, None] < D) & row_in[None, :], other=0.0)
    do = _load_tile(do_ptr, offs_m, n_rows, stride_dom, offs_d, stride_dod, D)
    lse = tl.load(lse_ptr + offs_m, mask=row_in, other=0.0)
    delta = tl.load(delta_ptr + offs_m, mask=row_in, other=0.0)
    # rank_b: the sample's row documents (DOCUMENTS), read up to the segment's last row
    rank_r, row_min, row_max, _ = _row_ranks(rank_b, offs_r, rows, seg_start, seg_start + rows,
                                             Lk, KIND)
    offs_i = seg_start + offs_r
    sT, tT = sm.score_tile(_dot(k, qT, TF32), offs_i, offs_j, Lq, qk_scale, scale, softcap,
                           inv_softcap, rel_h, rel_len, HAS_SOFTCAP, HAS_REL_BIAS, True)
    sT, cls = _mask_scores(sT, offs_r, offs_j, r0, r1, j0, j1, kv, pre, rows, off, hmin,
                           width, ks, rank_r, rank_j, row_min, row_max, KIND, True)
    if cls != jm.TILE_SKIP:  # only the permutation kind has dead tiles inside its range
        lse2 = tl.where(lse == float("-inf"), 0.0, lse * _LOG2E)  # see _bwd_probs
        pT = tl.math.exp2(sT - lse2[None, :])
        dpT = _dot(v, tl.trans(do), TF32)
        pzT = pT
        if DROPOUT:
            keepT = tl.trans(jm.dropout_keep(seed_lo, seed_hi, bh, offs_i, j0,
                                             drop_thr, BLOCK_M, BLOCK_N))
            pzT = tl.where(keepT, pT * keep_scale, 0.0)
            dpT = tl.where(keepT, dpT * keep_scale, 0.0)
        dsT = pT * (dpT - delta[None, :])
        if HAS_REL_BIAS:
            sm.accumulate_rel_grad(dsT, offs_i, offs_j, (offs_j[:, None] < Lk) & row_in[None, :],
                                   Lq, rel_len, drel_h, True)
        dsT = sm.pre_softcap_grad(dsT, tT, HAS_SOFTCAP)
        dv = _dot_acc(pzT.to(do.dtype), do, dv, TF32)
        dk = _dot_acc(dsT.to(qT.dtype), tl.trans(qT), dk, TF32)
    return dk, dv


@triton.jit(do_not_specialize=_VARYING)
def _attn_bwd_dkdv(Q, K, V, DO, LSE, DELTA, DK, DV, PARAMS, RANK, REL, DREL,
                   stride_qb, stride_qh, stride_qm, stride_qd,
                   stride_kb, stride_kh, stride_kn, stride_kd,
                   stride_vb, stride_vh, stride_vn, stride_vd,
                   stride_dob, stride_doh, stride_dom, stride_dod,
                   stride_dkb, stride_dkh, stride_dkn, stride_dkd,
                   stride_dvb, stride_dvh, stride_dvn, stride_dvd,
                   stride_rank, H, G, Lq, Lk, q_split, qk_scale, scale, keep_scale,
                   drop_thr, seed_lo, seed_hi, softcap, inv_softcap, rel_len,
                   D: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_N: tl.constexpr, KIND: tl.constexpr, DROPOUT: tl.constexpr,
                   TF32: tl.constexpr, HAS_SOFTCAP: tl.constexpr, HAS_REL_BIAS: tl.constexpr):
    """dK, dV of key tile program_id(1) and kv head program_id(0) (= b*Hkv + hk): loop over
    both streams, the G query heads of the group, and the query tiles that see the keys."""
    ACC: tl.constexpr = tl.float64 if Q.dtype.element_ty == tl.float64 else tl.float32
    pid = tl.program_id(1)
    bhk = tl.program_id(0)
    Hkv = H // G
    b = bhk // Hkv
    hk = bhk % Hkv
    b64 = b.to(tl.int64)
    j0 = pid * BLOCK_N
    j1 = j0 + BLOCK_N - 1  # last lane: FULL must cover lanes past Lk too
    offs_n = tl.arange(0, BLOCK_N)
    offs_j = j0 + offs_n
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    k = _load_tile(K + b64 * stride_kb + hk.to(tl.int64) * stride_kh
                   + j0.to(tl.int64) * stride_kn, offs_n, Lk - j0, stride_kn, offs_d,
                   stride_kd, D)
    v = _load_tile(V + b64 * stride_vb + hk.to(tl.int64) * stride_vh
                   + j0.to(tl.int64) * stride_vn, offs_n, Lk - j0, stride_vn, offs_d,
                   stride_vd, D)
    rank_b = RANK + b64 * stride_rank
    ks = jm.load_key_start(PARAMS, b)
    dk = tl.zeros([BLOCK_N, D_PAD], dtype=ACC)
    dv = tl.zeros([BLOCK_N, D_PAD], dtype=ACC)
    for s_id in tl.static_range(2):
        seg_start = s_id * q_split
        seg_len = (1 - s_id) * q_split + s_id * (Lq - q_split)
        kv, pre, rows, off, hmin, width = jm.load_stream(PARAMS, b, s_id)
        kv = tl.minimum(kv, Lk)
        rows = tl.minimum(rows, seg_len)
        rank_j = offs_j
        if KIND != jm.KIND_PERMUTATION:
            ra, rb = jm.window_query_range(j0, j1, kv, pre, rows, off, hmin, width, ks)
            if KIND == jm.KIND_DOCUMENTS:   # only the rows of the key tile's documents
                key_ok = (offs_j < kv) & (offs_j >= ks)
                rank_j = jm.load_key_docs(rank_b, offs_j, Lq, Lk, key_ok)
                kd_min, kd_max = jm.rank_extrema(rank_j, key_ok)
                ra = tl.maximum(ra, jm.doc_bound(rank_b + seg_start, kd_min, 0, rows, False))
                rb = tl.minimum(rb, jm.doc_bound(rank_b + seg_start, kd_max, 0, rows, True))
        else:
            ra = 0
            rb = tl.where(tl.maximum(j0, ks) < kv, rows, 0)
            rank_j = jm.load_rank(rank_b, offs_j, Lk, offs_j < kv)
        for g in range(0, G):
            h = hk * G + g
            bh = b * H + h
            q_bh = Q + b64 * stride_qb + h.to(tl.int64) * stride_qh
            do_bh = DO + b64 * stride_dob + h.to(tl.int64) * stride_doh
            rel_h = REL + h.to(tl.int64) * rel_len
            drel_h = DREL + h.to(tl.int64) * rel_len
            for r0 in range(ra, rb, BLOCK_M):
                offs_r = r0 + offs_m
                r1 = tl.minimum(r0 + BLOCK_M, seg_len) - 1
                row0 = (seg_start + r0).to(tl.int64)
                dk, dv = _dkdv_step(dk, dv, k, v, q_bh + row0 * stride_qm,
                                    do_bh + row0 * stride_dom, stride_qm, stride_qd,
                                    stride_dom, stride_dod, LSE + bh.to(tl.int64) * Lq + row0,
                                    DELTA + bh.to(tl.int64) * Lq + row0, seg_len - r0,
                                    offs_m, offs_d, offs_r, offs_j, r0, r1, j0, j1, kv, pre,
                                    rows, off, hmin, width, ks, rank_b, rank_j, qk_scale,
                                    keep_scale, bh, drop_thr, seed_lo, seed_hi, seg_start, Lk,
                                    Lq, scale, softcap, inv_softcap, rel_h, drel_h, rel_len,
                                    D, BLOCK_M, BLOCK_N, KIND, DROPOUT, TF32, HAS_SOFTCAP,
                                    HAS_REL_BIAS)
    dk = dk * scale
    n_in = (offs_n[:, None] < Lk - j0) & (offs_d[None, :] < D)
    dk_ptr = DK + b64 * stride_dkb + hk.to(tl.int64) * stride_dkh + j0.to(tl.int64) * stride_dkn
    dv_ptr = DV + b64 * stride_dvb + hk.to(tl.int64) * stride_dvh + j0.to(tl.int64) * stride_dvn
    tl.store(dk_ptr + offs_n[:, None] * stride_dkn + offs_d[None, :] * stride_dkd,
             dk.to(DK.dtype.element_ty), mask=n_in)
    tl.store(dv_ptr + offs_n[:, None] * stride_dvn + offs_d[None, :] * stride_dvd,
             dv.to(DV.dtype.element_ty), mask=n_in)


@triton.jit
def _dq_step(dq, q, do, lse, delta, n, K_bh, V_bh, stride_kn, stride_kd, stride_vn, stride_vd,
             offs_d, offs_r, offs_i, r0, r1, Lk, kv, pre, rows, off, hmin, width, ks,
             rank_b, rank_r, row_min, row_max, qk_scale, keep_scale, bh, drop_thr,
             seed_lo, seed_hi, Lq, scale, softcap, inv_softcap, rel_h, rel_len,
             D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, KIND: tl.constexpr,
             DROPOUT: tl.constexpr, TF32: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
             HAS_REL_BIAS: tl.constexpr):
    """dQ += dS k for key tile n (same key tiles as the forward)."""
    j0, j1, offs_j, k, v, rank_j = _key_tile(n, K_bh, V_bh, stride_kn, stride_kd, stride_vn,
                                             stride_vd, offs_d, rank_b, Lk, kv, KIND,
                                             BLOCK_N, D)
    pz, ds, cls = _bwd_probs(q, k, do, v, lse, delta, qk_scale, keep_scale, offs_r, offs_i,
                             offs_j, r0, r1, j0, j1, kv, pre, rows, off, hmin, width, ks,
                             rank_r, rank_j, row_min, row_max, bh, drop_thr, seed_lo,
                             seed_hi, Lq, scale, softcap, inv_softcap, rel_h, rel_len,
                             BLOCK_M, BLOCK_N, KIND, DROPOUT, TF32, HAS_SOFTCAP, HAS_REL_BIAS)
    if cls != jm.TILE_SKIP:
        dq = _dot_acc(ds.to(k.dtype), k, dq, TF32)
    return dq


@triton.jit(do_not_specialize=_VARYING)
def _attn_bwd_dq(Q, K, V, DO, LSE, DELTA, DQ, PARAMS, RANK, REL,
                 stride_qb, stride_qh, stride_qm, stride_qd,
                 stride_kb, stride_kh, stride_kn, stride_kd,
                 stride_vb, stride_vh, stride_vn, stride_vd,
                 stride_dob, stride_doh, stride_dom, stride_dod,
                 stride_dqb, stride_dqh, stride_dqm, stride_dqd,
                 stride_rank, H, G, Lq, Lk, q_split, qk_scale, scale, keep_scale,
                 drop_thr, seed_lo, seed_hi, softcap, inv_softcap, rel_len,
                 D: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr, KIND: tl.constexpr, DROPOUT: tl.constexpr,
                 TF32: tl.constexpr, HAS_SOFTCAP: tl.constexpr, HAS_REL_BIAS: tl.constexpr):
    """dQ of one (stream row tile, b*H + h): the forward's key-tile loops, recomputing p."""
    ACC: tl.constexpr = tl.float64 if Q.dtype.element_ty == tl.float64 else tl.float32
    b, h, hk, s_id, r0, r1, seg_start, seg_len, kv, pre, rows, off, hmin, width = \
        _program_rows(PARAMS, H, G, Lq, Lk, q_split, BLOCK_M)
    bh = tl.program_id(0)
    offs_m = tl.arange(0, BLOCK_M)
    offs_r = r0 + offs_m
    offs_i = seg_start + offs_r
    offs_d = tl.arange(0, D_PAD)
    b64 = b.to(tl.int64)
    row0 = (seg_start + r0).to(tl.int64)
    q = _load_tile(Q + b64 * stride_qb + h.to(tl.int64) * stride_qh + row0 * stride_qm,
                   offs_m, seg_len - r0, stride_qm, offs_d, stride_qd, D)
    do = _load_tile(DO + b64 * stride_dob + h.to(tl.int64) * stride_doh + row0 * stride_dom,
                    offs_m, seg_len - r0, stride_dom, offs_d, stride_dod, D)
    row_in = offs_r < seg_len
    lse = tl.load(LSE + bh.to(tl.int64) * Lq + offs_i, mask=row_in, other=0.0)
    delta = tl.load(DELTA + bh.to(tl.int64) * Lq + offs_i, mask=row_in, other=0.0)
    K_bh = K + b64 * stride_kb + hk.to(tl.int64) * stride_kh
    V_bh = V + b64 * stride_vb + hk.to(tl.int64) * stride_vh
    rank_b, rank_r, row_min, row_max, ks, n_pre, n_lo, n_hi = _row_tile_keys(
        RANK + b64 * stride_rank, PARAMS, b, offs_r, r0, r1, seg_start, Lq, Lk, kv, pre, rows,
        off, hmin, width, KIND, BLOCK_N)
    rel_h = REL + h.to(tl.int64) * rel_len
    dq = tl.zeros([BLOCK_M, D_PAD], dtype=ACC)
    for n in range(0, n_pre):
        dq = _dq_step(dq, q, do, lse, delta, n, K_bh, V_bh, stride_kn, stride_kd, stride_vn,
                      stride_vd, offs_d, offs_r, offs_i, r0, r1, Lk, kv, pre, rows, off, hmin,
                      width, ks, rank_b, rank_r, row_min, row_max, qk_scale, keep_scale, bh,
                      drop_thr, seed_lo, seed_hi, Lq, scale, softcap, inv_softcap, rel_h,
                      rel_len, D, BLOCK_M, BLOCK_N, KIND, DROPOUT, TF32, HAS_SOFTCAP,
                      HAS_REL_BIAS)
    for n in range(n_lo, n_hi):
        dq = _dq_step(dq, q, do, lse, delta, n, K_bh, V_bh, stride_kn, stride_kd, stride_vn,
                      stride_vd, offs_d, offs_r, offs_i, r0, r1, Lk, kv, pre, rows, off, hmin,
                      width, ks, rank_b, rank_r, row_min, row_max, qk_scale, keep_scale, bh,
                      drop_thr, seed_lo, seed_hi, Lq, scale, softcap, inv_softcap, rel_h,
                      rel_len, D, BLOCK_M, BLOCK_N, KIND, DROPOUT, TF32, HAS_SOFTCAP,
                      HAS_REL_BIAS)
    dq = dq * scale
    dq_ptr = DQ + b64 * stride_dqb + h.to(tl.int64) * stride_dqh + row0 * stride_dqm
    tl.store(dq_ptr + offs_m[:, None] * stride_dqm + offs_d[None, :] * stride_dqd,
             dq.to(DQ.dtype.element_ty), mask=row_in[:, None] & (offs_d[None, :] < D))
