"""The mask algebra as ``@triton.jit`` helpers: the third spelling of
``janus_kernels/masks.py`` and ``csrc/include/janus/mask.h`` (all three must agree), plus the
Philox dropout keep-mask of ``janus_kernels/dropout.py`` / ``csrc/include/janus/philox.h``.

Per sample ``b`` a descriptor row holds ``KV_LEN, PREFIX`` and, per stream ``s``, the four
integers ``ROWS[s], OFF[s], HMIN[s], WIDTH[s]``. For a local row ``r`` of stream ``s`` and
key ``j``::

    hi = max(r + OFF, HMIN);  lo = hi - WIDTH          (both nondecreasing in r)
    WINDOW:      allowed = r < ROWS and KS <= j < KV_LEN and (j < PREFIX or lo <= j < hi)
    PERMUTATION: allowed = r < ROWS and KS <= j < KV_LEN and rank[j] + OFF <= rank[r]
    DOCUMENTS:   allowed = WINDOW and q_doc[i] == k_doc[j]

(``KS`` = ``KEY_START``, loaded by :func:`load_key_start`.) The documents kind reads its side
table like the permutation kind reads ranks: the row documents of a row tile and the key
documents of a key tile (:func:`load_row_docs`, :func:`load_key_docs`) go through the same
``rank_r`` / ``rank_j`` / ``row_min`` / ``row_max`` values, and :func:`doc_tile_class`
refines the window class from their extrema (= the corner documents, both runs being
nondecreasing).

The kernels tile the query rows *per stream* (a row tile never straddles ``q_split``), so
every helper below works on one stream's scalars, loaded once per program by
:func:`load_stream`. Monotonicity of ``lo``/``hi`` gives closed forms for

* the keys a row block ``[r0, r1]`` needs: ``[0, PREFIX) U [lo(r0), hi(r1))``
  (:func:`window_key_range`, = ``SampleMask::block_ranges``),
* the rows of one stream that see a key block ``[j0, j1]`` (:func:`window_query_range`,
  the transpose, used by the dK/dV kernel),
* the class of a tile (:func:`window_tile_class` = ``SampleMask::segment_class``;
  :func:`perm_tile_class` is exact from the tile's rank extrema).

Callers must pass ``kv = min(KV_LEN, Lk)`` and ``rows = min(ROWS[s], stream length)``; the
clamps do not change the predicate (no row/key beyond the tensor exists) but keep every
index the kernels derive inside the tensors.
"""
import triton
import triton.language as tl

# Field indices (janus_kernels.masks.Field) and enums (Kind, TileClass).
NUM_FIELDS = tl.constexpr(11)
F_KV_LEN = tl.constexpr(0)
F_PREFIX = tl.constexpr(1)
F_ROWS0 = tl.constexpr(2)
F_KEY_START = tl.constexpr(10)
KIND_WINDOW = tl.constexpr(0)
KIND_PERMUTATION = tl.constexpr(1)
KIND_DOCUMENTS = tl.constexpr(2)
TILE_SKIP = tl.constexpr(0)
TILE_PARTIAL = tl.constexpr(1)
TILE_FULL = tl.constexpr(2)
_BIG = tl.constexpr(1 << 30)


@triton.jit
def load_stream(params_ptr, b, s):
    """``(kv_len, prefix, rows, off, hmin, width)`` of sample ``b``, stream ``s`` (``s`` may
    be a scalar or a tensor of 0/1, which gathers per element)."""
    base = params_ptr + b * NUM_FIELDS
    kv = tl.load(base + F_KV_LEN)
    pre = tl.load(base + F_PREFIX)
    f = base + F_ROWS0 + 4 * s
    return kv, pre, tl.load(f), tl.load(f + 1), tl.load(f + 2), tl.load(f + 3)


@triton.jit
def load_key_start(params_ptr, b):
    """KEY_START of sample ``b`` (first real key), clamped to >= 0."""
    return tl.maximum(tl.load(params_ptr + b * NUM_FIELDS + F_KEY_START), 0)


@triton.jit
def load_row_docs(docs_ptr, i, Lq, valid):
    """Documents of global rows ``i`` (clamped into [0, Lq)) where ``valid``, 0 elsewhere."""
    return tl.load(docs_ptr + tl.maximum(tl.minimum(i, Lq - 1), 0), mask=valid & (Lq > 0),
                   other=0)


@triton.jit
def load_key_docs(docs_ptr, j, Lq, Lk, valid):
    """Documents of keys ``j`` (columns ``Lq + j`` of the side table, clamped) where
    ``valid``, 0 elsewhere."""
    return tl.load(docs_ptr + Lq + tl.maximum(tl.minimum(j, Lk - 1), 0),
                   mask=valid & (Lk > 0), other=0)


@triton.jit
def doc_tile_class(cls, row_min, row_max, key_min, key_max):
    """The window class ``cls`` refined by documents (``SampleMask::segment_class``): SKIP
    if the rows' and the keys' document ranges are disjoint, FULL only if all four extrema
    are equal. ``key_min``/``key_max`` are over the tile's real keys (``rank_extrema``)."""
    disjoint = (row_max < key_min) | (key_max < row_min)
    same = (row_min == row_max) & (key_min == key_max) & (row_min == key_min)
    cls = tl.where(disjoint, TILE_SKIP, cls)
    return tl.where((cls == TILE_FULL) & ~same, TILE_PARTIAL, cls)


@triton.jit
def doc_bound(docs_ptr, d, a, e, STRICT: tl.constexpr):
    """First index ``x`` in ``[a, e)`` with ``docs[x] >= d`` (``STRICT``: ``> d``), else ``e``:
    bisection over a nondecreasing run of documents (key documents:
    ``SampleMask::doc_bound``; row documents of a stream for the dK/dV kernel). 31 steps
    cover 2^30 entries; loads stay inside ``[a, e)``."""
    lo = a
    hi = tl.maximum(e, a)
    for _ in range(0, 31):
        active = lo < hi
        mid = lo + (hi - lo) // 2
        v = tl.load(docs_ptr + tl.where(active, mid, a), mask=active, other=0)
        if STRICT:
            right = v <= d
        else:
            right = v < d
        lo = tl.where(active & right, mid + 1, lo)
        hi = tl.where(active & ~right, mid, hi)
    return lo


@triton.jit
def window_hi(r, off, hmin):
    """Exclusive upper end of row r's window, ``max(r + OFF, HMIN)``."""
    return tl.maximum(r + off, hmin)


@triton.jit
def window_allowed(r, j, kv, pre, rows, off, hmin, width, ks):
    """WINDOW-kind predicate on broadcastable local rows ``r`` and keys ``j``."""
    hi = tl.maximum(r + off, hmin)
    return (r < rows) & (j < kv) & (j >= ks) & ((j < pre) | ((hi - width <= j) & (j < hi)))


@triton.jit
def perm_allowed(r, j, rank_r, rank_j, kv, rows, off, ks):
    """PERMUTATION-kind predicate; ``rank_r``/``rank_j`` are the loaded ranks of r and j."""
    return (r < rows) & (j < kv) & (j >= ks) & (rank_j + off <= rank_r)


@triton.jit
def load_rank(rank_ptr, x, Lk, valid):
    """rank[min(x, Lk-1)] where ``valid`` (clamped like masks.py), 0 elsewhere."""
    return tl.load(rank_ptr + tl.minimum(x, Lk - 1), mask=valid & (Lk > 0), other=0)


@triton.jit
def mask_allowed(params_ptr, rank_ptr, rank_stride, b, i, j, q_split, Lq, Lk,
                 KIND: tl.constexpr):
    """The full two-stream predicate for global rows ``i`` and keys ``j`` (any broadcastable
    shapes), exactly ``MaskDescriptor.allowed``. Kernels use the per-stream helpers; this
    one is the reference spelling the tests compare against ``materialize()``."""
    s = (i >= q_split).to(tl.int32)
    r = i - s * q_split
    stream_len = tl.where(s == 0, q_split, Lq - q_split)
    kv, pre, rows, off, hmin, width = load_stream(params_ptr, b, s)
    ks = load_key_start(params_ptr, b)
    kv = tl.minimum(kv, Lk)
    rows = tl.minimum(rows, stream_len)
    rk = rank_ptr + b * rank_stride
    if KIND == KIND_PERMUTATION:
        row_ok = r < rows
        key_ok = j < kv
        ok = perm_allowed(r, j, load_rank(rk, r, Lk, row_ok), load_rank(rk, j, Lk, key_ok),
                          kv, rows, off, ks)
    else:
        ok = window_allowed(r, j, kv, pre, rows, off, hmin, width, ks)
        if KIND == KIND_DOCUMENTS:
            ok = ok & (load_row_docs(rk, i, Lq, ok) == load_key_docs(rk, j, Lq, Lk, ok))
    return ok


@triton.jit
def window_key_range(r0, r1, kv, pre, rows, off, hmin, width, ks):
    """Keys needed by local rows ``[r0, r1]`` of one stream: ``[0, pre) U [lo, hi)``
    (``SampleMask::block_ranges``): exact unless a prefix part lies above ``KEY_START > 0``
    (then keys [0, KEY_START) are included; their tiles are SKIP). Empty parts come back as
    ``pre = 0`` / ``lo = hi = 0``."""
    r1v = tl.minimum(r1, rows - 1)
    no_rows = r1v < r0
    pre_end = tl.where(no_rows | (tl.minimum(pre, kv) <= ks), 0, tl.minimum(pre, kv))
    lo = tl.maximum(window_hi(r0, off, hmin) - width, ks)
    hi = tl.minimum(window_hi(r1v, off, hmin), kv)
    empty = no_rows | (width <= 0) | (lo >= hi)
    return pre_end, tl.where(empty, 0, lo), tl.where(empty, 0, hi)


@triton.jit
def window_query_range(j0, j1, kv, pre, rows, off, hmin, width, ks):
    """Local rows ``[ra, rb)`` of one stream that see at least one key of ``[j0, j1]``.

    Only the real keys ``[max(j0, KEY_START), jl]`` count (``jl`` = last real key of the
    block; ``j0`` below is that first real key). If ``j0 < PREFIX`` every valid row does.
    Otherwise row r sees a window key of the block iff ``hi(r) > j0`` and ``lo(r) <= jl``:
    ``hi(r) > j0``  <=>  ``HMIN > j0`` or ``r >= j0 - OFF + 1``, and
    ``lo(r) <= jl`` <=>  ``HMIN - WIDTH <= jl`` and ``r <= jl + WIDTH - OFF``.
    """
    jl = tl.minimum(j1, kv - 1)
    j0 = tl.maximum(j0, ks)
    ra = tl.where(hmin > j0, 0, tl.maximum(j0 - off + 1, 0))
    rb = tl.where(hmin - width > jl, 0, tl.minimum(jl + width - off + 1, rows))
    rb = tl.where(width > 0, rb, 0)
    in_prefix = j0 < pre
    ra = tl.where(in_prefix, 0, ra)
    rb = tl.where(in_prefix, rows, rb)
    empty = (j0 > jl) | (rb <= ra)
    return tl.where(empty, 0, ra), tl.where(empty, 0, rb)


@triton.jit
def window_tile_class(r0, r1, j0, j1, kv, pre, rows, off, hmin, width, ks):
    """Class of local rows ``[r0, r1]`` x keys ``[j0, j1]`` (inclusive), exactly
    ``SampleMask::segment_class``: SKIP if no entry is visible, FULL if every entry is (all
    rows real, all keys real and in the prefix or every row's window). The kernels pass the
    tile's last *lane* ``j1 = j0 + BLOCK_N - 1``, so a FULL tile has no lane past ``KV_LEN``
    (lanes past the tensor would otherwise enter the softmax unmasked)."""
    r1v = tl.minimum(r1, rows - 1)
    jl = tl.minimum(j1, kv - 1)
    j0k = tl.maximum(j0, ks)                  # first real key of the tile
    win_hit = (width > 0) & (window_hi(r1v, off, hmin) > j0k) & \
        (window_hi(r0, off, hmin) <= jl + width)
    skip = (r1v < r0) | (j0k > jl) | ((j0k >= pre) & ~win_hit)
    covered = (j0 >= ks) & (j1 < kv) & ((j1 < pre) | (
        (width > 0) & (window_hi(r1, off, hmin) - width <= tl.maximum(j0, pre))
        & (j1 < window_hi(r0, off, hmin))))
    full = (r1 < rows) & covered
    return tl.where(skip, TILE_SKIP, tl.where(full, TILE_FULL, TILE_PARTIAL))


@triton.jit
def rank_extrema(rank_vals, valid):
    """(min, max) of the ranks where ``valid`` (+BIG / -BIG when nothing is valid)."""
    lo = tl.min(tl.where(valid, rank_vals, _BIG), axis=0)
    hi = tl.max(tl.where(valid, rank_vals, -_BIG), axis=0)
    return lo, hi


@triton.jit
def perm_tile_class(r0, r1, j0, j1, kv, rows, off, row_min, row_max, key_min, key_max, ks):
    """PERMUTATION tile class from the rank extrema of the tile's real rows / real keys
    (``[max(j0, KEY_START), min(j1, KV_LEN - 1)]``): SKIP iff even the smallest key rank
    misses the largest row rank, FULL iff the largest key rank passes the smallest row rank
    (and every row and key of the tile is real)."""
    r1v = tl.minimum(r1, rows - 1)
    skip = (r1v < r0) | (tl.maximum(j0, ks) > tl.minimum(j1, kv - 1)) | \
        (key_min + off > row_max)
    full = (r1 < rows) & (j1 < kv) & (j0 >= ks) & (key_max + off <= row_min)
    return tl.where(skip, TILE_SKIP, tl.where(full, TILE_FULL, TILE_PARTIAL))


# ================================================================================ dropout
@triton.jit
def dropout_keep(seed_lo, seed_hi, bh, offs_i, j0, threshold,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Keep-mask (BLOCK_M, BLOCK_N) of rows ``offs_i`` and keys ``[j0, j0 + BLOCK_N)`` of head
    ``bh = b*H + h``: key j is kept iff ``philox(counter=(j>>2, i, bh, 0), key=seed)[j & 3]
    >= threshold`` (unsigned). One Philox call yields the 4 words of 4 consecutive keys, so
    the tile draws (BLOCK_M, BLOCK_N/4) counters and interleaves the words back into key
    order. ``j0`` must be a multiple of 4; seed halves and threshold are int32 bit patterns.
    """
    seed = (seed_hi.to(tl.uint32, bitcast=True).to(tl.uint64) << 32) | \
        seed_lo.to(tl.uint32, bitcast=True).to(tl.uint64)
    zero = tl.zeros([BLOCK_M, BLOCK_N // 4], dtype=tl.int32)
    c0 = zero + (j0 // 4 + tl.arange(0, BLOCK_N // 4))[None, :]
    c1 = zero + offs_i[:, None]
    c2 = zero + bh
    w0, w1, w2, w3 = tl.philox(seed, c0, c1, c2, zero)
    # join(join(w0, w2), join(w1, w3))[m, k, a, t] = word 2a + t of counter k: row-major
    # flattening of (k, a, t) is key 4k + 2a + t.
    bits = tl.reshape(tl.join(tl.join(w0, w2), tl.join(w1, w3)), (BLOCK_M, BLOCK_N))
    return bits >= threshold.to(tl.uint32, bitcast=True)
