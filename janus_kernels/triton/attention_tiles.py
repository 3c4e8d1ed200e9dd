"""Shared @triton.jit pieces of the attention kernels (janus_kernels/triton/attention.py
documents the algorithm): dots, row-tile placement, tile loads, the key-tile range and the
masking of a score tile from the descriptor (janus_kernels/triton/mask.py)."""
import triton
import triton.language as tl

from . import mask as jm

_LN2 = tl.constexpr(0.6931471805599453)
_LOG2E = tl.constexpr(1.4426950408889634)


# Lengths and seeds change from batch to batch: without this, Triton would compile a new
# variant whenever one of them switches between "== 1", "divisible by 16" and other.
_VARYING = ["Lq", "Lk", "q_split", "seed_lo", "seed_hi", "rel_len"]


# ============================================================================ helpers
@triton.jit
def _dot(a, b, TF32: tl.constexpr):
    """tl.dot with fp32 accumulation. fp32 operands use IEEE fp32 products unless TF32 is
    set: the launcher sets it when torch's float32 matmul precision allows TF32 (as it does
    for torch.matmul), trading fp32 accuracy (10-bit mantissa products) for tensor cores.
    bf16/fp16 operands always use tensor cores. (3xTF32 was measured to spill registers in
    every tile size tried.)"""
    if a.dtype == tl.float32:
        if TF32:
            r = tl.dot(a, b, input_precision="tf32")
        else:
            r = tl.dot(a, b, input_precision="ieee")
    else:
        r = tl.dot(a, b)
    return r


@triton.jit
def _dot_acc(a, b, acc, TF32: tl.constexpr):
    """acc + a @ b accumulated in place (the MMA accumulator), precision as :func:`_dot`."""
    if a.dtype == tl.float32:
        if TF32:
            r = tl.dot(a, b, acc, input_precision="tf32")
        else:
            r = tl.dot(a, b, acc, input_precision="ieee")
    else:
        r = tl.dot(a, b, acc)
    return r


@triton.jit
def _row_tile(pid, q_split, Lq, BLOCK_M: tl.constexpr):
    """Program ``pid`` of the per-stream row tiling: stream s, first local row r0, and the
    stream's first global row and length. Stream 0 has cdiv(q_split, BLOCK_M) tiles."""
    n0 = tl.cdiv(q_split, BLOCK_M)
    s = (pid >= n0).to(tl.int32)
    r0 = (pid - s * n0) * BLOCK_M
    seg_start = s * q_split
    seg_len = tl.where(s == 0, q_split, Lq - q_split)
    return s, r0, seg_start, seg_len


@triton.jit
def _program_rows(PARAMS, H, G, Lq, Lk, q_split, BLOCK_M: tl.constexpr):
    """What a (b*H + h, row tile) program of the forward / dQ grid works on: batch, head, kv
    head, stream, local rows r0..r1 of the stream segment, and the stream's descriptor ints
    (kv clamped to Lk, rows to the segment)."""
    bh = tl.program_id(0)
    b = bh // H
    h = bh % H
    hk = h // G
    s_id, r0, seg_start, seg_len = _row_tile(tl.program_id(1), q_split, Lq, BLOCK_M)
    kv, pre, rows, off, hmin, width = jm.load_stream(PARAMS, b, s_id)
    kv = tl.minimum(kv, Lk)
    rows = tl.minimum(rows, seg_len)
    r1 = tl.minimum(r0 + BLOCK_M, seg_len) - 1
    return b, h, hk, s_id, r0, r1, seg_start, seg_len, kv, pre, rows, off, hmin, width


@triton.jit
def _load_tile(base, offs, n_valid, stride_n, offs_d, stride_d, D: tl.constexpr):
    """(len(offs), D_PAD) tile of rows ``offs`` (< n_valid) of a (rows, D) matrix at
    ``base``, zero-padded in both directions."""
    return tl.load(base + offs[:, None] * stride_n + offs_d[None, :] * stride_d,
                   mask=(offs[:, None] < n_valid) & (offs_d[None, :] < D), other=0.0)


@triton.jit
def _key_tiles(r0, r1, kv, pre, rows, off, hmin, width, ks, row_min, row_max, kdoc,
               KIND: tl.constexpr, BLOCK_N: tl.constexpr):
    """Key-tile loops of a row block: ``[0, n_pre)`` then ``[n_lo, n_hi)`` (disjoint).
    Documents: the window's tiles inside the key run of the block's documents
    ``[row_min, row_max]`` (``kdoc``: the key documents), one loop."""
    if KIND != jm.KIND_PERMUTATION:
        pre_end, lo, hi = jm.window_key_range(r0, r1, kv, pre, rows, off, hmin, width, ks)
        n_pre = tl.cdiv(pre_end, BLOCK_N)
        n_lo = tl.maximum(lo // BLOCK_N, n_pre)
        n_hi = tl.maximum(tl.cdiv(hi, BLOCK_N), n_lo)
        if KIND == jm.KIND_DOCUMENTS:
            start = tl.maximum(jm.doc_bound(kdoc, row_min, ks, kv, False),
                               tl.where(pre_end > 0, 0, lo))
            end = tl.minimum(jm.doc_bound(kdoc, row_max, ks, kv, True),
                             tl.maximum(pre_end, hi))
            n_pre = 0
            n_lo = start // BLOCK_N
            n_hi = tl.maximum(tl.cdiv(end, BLOCK_N), n_lo)
    else:  # permutation: every real key may be visible; dead tiles skipped by class
        n_pre = 0
        n_lo = ks // BLOCK_N
        n_hi = tl.where(r0 < rows, tl.maximum(tl.cdiv(kv, BLOCK_N), n_lo), n_lo)
    return n_pre, n_lo, n_hi


@triton.jit
def _row_docs(rank_b, offs_r, rows, seg_start, Lq):
    """Documents kind: the row documents of a row tile (local rows ``offs_r`` of the stream
    starting at global row ``seg_start``), their extrema over the valid rows, and the pointer
    to the sample's key documents (column Lq of its side table), which the key-tile steps
    read as ``rank_b``."""
    row_ok = offs_r < rows
    docs = jm.load_row_docs(rank_b, seg_start + offs_r, Lq, row_ok)
    lo, hi = jm.rank_extrema(docs, row_ok)
    return docs, lo, hi, rank_b + Lq


@triton.jit
def _mask_scores(s, offs_r, offs_j, r0, r1, j0, j1, kv, pre, rows, off, hmin, width, ks,
                 rank_r, rank_j, row_min, row_max, KIND: tl.constexpr, TRANS: tl.constexpr):
    """Apply the mask to a score tile (rows x keys, or keys x rows if TRANS) when the tile
    is PARTIAL; return the scores and the tile's class. ``rank_r``/``rank_j`` (and the row
    extrema) are ranks for the permutation kind, documents for the documents kind."""
    if TRANS:
        rr = offs_r[None, :]
        jj = offs_j[:, None]
        rank_rr = rank_r[None, :]
        rank_jj = rank_j[:, None]
    else:
        rr = offs_r[:, None]
        jj = offs_j[None, :]
        rank_rr = rank_r[:, None]
        rank_jj = rank_j[None, :]
    if KIND != jm.KIND_PERMUTATION:
        cls = jm.window_tile_class(r0, r1, j0, j1, kv, pre, rows, off, hmin, width, ks)
        if KIND == jm.KIND_DOCUMENTS:
            key_min, key_max = jm.rank_extrema(rank_j, (offs_j < kv) & (offs_j >= ks))
            cls = jm.doc_tile_class(cls, row_min, row_max, key_min, key_max)
        if cls != jm.TILE_FULL:
            ok = jm.window_allowed(rr, jj, kv, pre, rows, off, hmin, width, ks)
            if KIND == jm.KIND_DOCUMENTS:
                ok = ok & (rank_rr == rank_jj)
            s = tl.where(ok, s, float("-inf"))
    else:
        key_min, key_max = jm.rank_extrema(rank_j, (offs_j < kv) & (offs_j >= ks))
        cls = jm.perm_tile_class(r0, r1, j0, j1, kv, rows, off, row_min, row_max,
                                 key_min, key_max, ks)
        if cls != jm.TILE_FULL:
            s = tl.where(jm.perm_allowed(rr, jj, rank_rr, rank_jj, kv, rows, off, ks), s,
                         float("-inf"))
    return s, cls


@triton.jit
def _row_tile_keys(rank_b, PARAMS, b, offs_r, r0, r1, seg_start, Lq, Lk, kv, pre, rows, off,
                   hmin, width, KIND: tl.constexpr, BLOCK_N: tl.constexpr):
    """What a row tile (the forward's and dQ's) needs of the mask before its key loop: the
    side-table pointer (advanced to the key documents for the DOCUMENTS kind), the rows'
    ranks / documents and their extrema, KEY_START, and the key-tile ranges
    [0, n_pre) U [n_lo, n_hi)."""
    rank_r, row_min, row_max, rank_b = _row_ranks(rank_b, offs_r, rows, seg_start, Lq, Lk, KIND)
    ks = jm.load_key_start(PARAMS, b)
    n_pre, n_lo, n_hi = _key_tiles(r0, r1, kv, pre, rows, off, hmin, width, ks, row_min,
                                   row_max, rank_b, KIND, BLOCK_N)
    return rank_b, rank_r, row_min, row_max, ks, n_pre, n_lo, n_hi


@triton.jit
def _row_ranks(rank_b, offs_r, rows, seg_start, doc_hi, Lk, KIND: tl.constexpr):
    """The side-table view of a tile's rows: their ranks (PERMUTATION) or documents
    (DOCUMENTS, via _row_docs with `doc_hi`; the pointer it returns is advanced to the key
    documents) and the extrema over the real rows; the rows themselves and (0, 0) for the
    window kind."""
    rank_r = offs_r
    row_min = 0
    row_max = 0
    if KIND == jm.KIND_PERMUTATION:
        row_ok = offs_r < rows
        rank_r = jm.load_rank(rank_b, offs_r, Lk, row_ok)
        row_min, row_max = jm.rank_extrema(rank_r, row_ok)
    if KIND == jm.KIND_DOCUMENTS:
        rank_r, row_min, row_max, rank_b = _row_docs(rank_b, offs_r, rows, seg_start, doc_hi)
    return rank_r, row_min, row_max, rank_b


@triton.jit
def _key_tile(n, K_bh, V_bh, stride_kn, stride_kd, stride_vn, stride_vd, offs_d, rank_b, Lk,
              kv, KIND: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr):
    """Key tile n of a row tile's loop (forward, dQ): its bounds, K and V tiles and the keys'
    ranks / documents (rank_b points at the key documents for DOCUMENTS, see _row_docs)."""
    j0 = n * BLOCK_N
    offs_n = tl.arange(0, BLOCK_N)
    offs_j = j0 + offs_n
    j1 = j0 + BLOCK_N - 1  # last lane: FULL must cover lanes past Lk too
    k = _load_tile(K_bh + j0.to(tl.int64) * stride_kn, offs_n, Lk - j0, stride_kn, offs_d,
                   stride_kd, D)
    v = _load_tile(V_bh + j0.to(tl.int64) * stride_vn, offs_n, Lk - j0, stride_vn, offs_d,
                   stride_vd, D)
    rank_j = offs_j
    if KIND == jm.KIND_PERMUTATION:
        rank_j = jm.load_rank(rank_b, offs_j, Lk, offs_j < kv)
    if KIND == jm.KIND_DOCUMENTS:
        rank_j = jm.load_key_docs(rank_b, offs_j, 0, Lk, offs_j < kv)
    return j0, j1, offs_j, k, v, rank_j
