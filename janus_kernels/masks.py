"""Mask descriptors: structured attention masks as a few integers per sample.

A :class:`MaskDescriptor` never holds a ``(B, Lq, Lk)`` tensor. It holds an int32
table ``params`` of shape ``(B, NUM_FIELDS)`` (and, for the permutation family only,
an int32 ``rank`` array of shape ``(B, Lk)``). Every backend (the dense reference,
the C++ CPU kernel, Triton, CUDA) evaluates the *same* predicate from these numbers;
``csrc/include/janus/mask.h`` and ``janus_kernels/triton/mask.py`` are the other two
spellings of the functions in this file.

The "prefix + per-row window" form
----------------------------------
Query rows come in up to two *streams*: rows ``[0, q_split)`` are stream 0 and rows
``[q_split, Lq)`` are stream 1 (local row ``r = i - q_split``). JANUS puts content rows in
stream 0 and query rows in stream 1; single-stream masks have ``q_split == Lq``.
For sample ``b``, row ``i`` (stream ``s``, local row ``r``) and key ``j``::

    valid_row = r < ROWS[s]                 # padding rows see nothing -> output 0
    valid_key = j < KV_LEN
    hi = max(r + OFF[s], HMIN[s])           # nondecreasing in r
    lo = hi - WIDTH[s]                      # WIDTH = 0: no window; UNBOUNDED: [0, hi)
    allowed = valid_row and valid_key and (j < PREFIX or lo <= j < hi)

Because ``lo`` and ``hi`` are nondecreasing in ``r``, the keys a block of rows needs are
``[0, PREFIX) ∪ [lo(r_first), hi(r_last))`` and a tile's class (skip / partial / full)
follows in closed form from the corner rows, with no dense mask anywhere.

Families (one factory each, below)::

    full / key padding   PREFIX = kv_len, no window
    causal               hi = r + 1 (+ offset), unbounded window
    sliding window       hi = r + 1, WIDTH = w
    prefix-LM            PREFIX = p, causal window
    JANUS AR             two causal streams sharing content keys
    JANUS NAR/AUX        PREFIX = U; content: hi = max(r+1, U+M); query: hi = U+M+r; WIDTH = M
    permutation          rank[j] + strict[s] <= rank[r]  (needs the (B, Lk) rank array)

Example, JANUS NAR/AUX for U=3, M=2 (rows = 7 content + 2 query, keys = 7 content;
``X`` may attend)::

            V  V  V  M  M  G  G
        V   X  X  X  X  X  .  .
        V   X  X  X  X  X  .  .
        V   X  X  X  X  X  .  .
        M   X  X  X  X  X  .  .
        M   X  X  X  X  X  .  .
        G   X  X  X  .  X  X  .      content G row 0: window [1+3, 1+5) ∩ ... = {M1, G0}
        G   X  X  X  .  .  X  X
        q0  X  X  X  X  X  .  .      query 0 sees the masks of itself and later tokens
        q1  X  X  X  .  X  X  .      query 1 sees G0 and M1
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Optional, Sequence, Union

import torch

__all__ = [
    "UNBOUNDED", "Field", "Kind", "TileClass", "MaskDescriptor",
    "full_mask", "key_padding_mask", "causal_mask", "sliding_window_mask", "prefix_lm_mask",
    "janus_nar_mask", "janus_ar_mask", "permutation_mask",
]

#: A window width meaning "no lower bound" (lo = hi - UNBOUNDED is below every key).
UNBOUNDED = 1 << 30


class Field(enum.IntEnum):
    """Column index of each per-sample integer in ``MaskDescriptor.params``."""

    KV_LEN = 0   # real keys of the sample: keys j >= KV_LEN are padding
    PREFIX = 1   # keys j < PREFIX are visible to every valid row
    ROWS0 = 2    # real rows of stream 0
    OFF0 = 3     # stream 0 window: hi = max(r + OFF0, HMIN0)  (permutation: strictness)
    HMIN0 = 4
    WIDTH0 = 5   # stream 0 window: lo = hi - WIDTH0
    ROWS1 = 6    # same four for stream 1
    OFF1 = 7
    HMIN1 = 8
    WIDTH1 = 9


NUM_FIELDS = len(Field)


class Kind(enum.IntEnum):
    WINDOW = 0       # the prefix + per-row window predicate
    PERMUTATION = 1  # rank[j] + OFF[s] <= rank[r]


class TileClass(enum.IntEnum):
    SKIP = 0     # no visible entry: the kernel never touches the tile
    PARTIAL = 1  # some visible entries: evaluate the predicate
    FULL = 2     # every entry visible: compute without the predicate


IntsLike = Union[torch.Tensor, Sequence[int], int]


@dataclasses.dataclass(frozen=True)
class MaskDescriptor:
    """A structured mask for ``attention(q, k, v, mask)`` with q of length ``q_len`` and k of
    length ``kv_len``: per-sample integers, never a dense tensor.

    Build one with the factories in this module (``janus_nar_mask``, ``causal_mask``, ...).
    ``materialize()`` gives the dense bool ``(B, q_len, kv_len)`` equivalent (True = may
    attend) for tests and for the dense baselines.
    """

    params: torch.Tensor          # (B, NUM_FIELDS) int32
    q_len: int                    # padded rows (both streams)
    kv_len: int                   # padded keys
    q_split: int                  # first row of stream 1 (== q_len for one stream)
    kind: Kind = Kind.WINDOW
    rank: Optional[torch.Tensor] = None  # (B, kv_len) int32, permutation family only
    family: str = "custom"

    def __post_init__(self) -> None:
        p = self.params
        if not isinstance(p, torch.Tensor) or p.dtype != torch.int32 or p.dim() != 2 \
                or p.shape[1] != NUM_FIELDS:
            raise ValueError(f"MaskDescriptor.params: expected an int32 tensor of shape "
                             f"(B, {NUM_FIELDS}), got {_describe(p)}")
        if self.q_len < 0 or self.kv_len < 0 or not 0 <= self.q_split <= self.q_len:
            raise ValueError(f"MaskDescriptor: need q_len >= 0, kv_len >= 0 and "
                             f"0 <= q_split <= q_len, got q_len={self.q_len}, "
                             f"kv_len={self.kv_len}, q_split={self.q_split}")
        if self.kind == Kind.PERMUTATION:
            r = self.rank
            if not isinstance(r, torch.Tensor) or r.dtype != torch.int32 \
                    or tuple(r.shape) != (p.shape[0], self.kv_len) or r.device != p.device:
                raise ValueError(f"MaskDescriptor.rank: expected int32 ({p.shape[0]}, "
                                 f"{self.kv_len}) on {p.device}, got {_describe(r)}")

    # ------------------------------------------------------------------ basics
    @property
    def batch_size(self) -> int:
        return self.params.shape[0]

    @property
    def device(self) -> torch.device:
        return self.params.device

    def to(self, device: Union[str, torch.device]) -> "MaskDescriptor":
        return dataclasses.replace(
            self, params=self.params.to(device),
            rank=None if self.rank is None else self.rank.to(device))

    def field(self, f: Field) -> torch.Tensor:
        return self.params[:, int(f)]

    def __repr__(self) -> str:
        return (f"MaskDescriptor(family={self.family!r}, B={self.batch_size}, "
                f"q_len={self.q_len}, kv_len={self.kv_len}, q_split={self.q_split})")

    # ---------------------------------------------------------------- predicate
    def allowed(self, b: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        """The per-element predicate on broadcastable index tensors (b, i, j)."""
        p = self.params.long()
        b, i, j = torch.broadcast_tensors(b.long(), i.long(), j.long())
        s = (i >= self.q_split).long()
        r = i - s * self.q_split
        rows = torch.where(s == 0, p[b, Field.ROWS0], p[b, Field.ROWS1])
        off = torch.where(s == 0, p[b, Field.OFF0], p[b, Field.OFF1])
        ok = (r < rows) & (j < p[b, Field.KV_LEN])
        if self.kind == Kind.PERMUTATION:
            rk = self.rank.long()
            jc = j.clamp(max=max(self.kv_len - 1, 0))
            rc = r.clamp(max=max(self.kv_len - 1, 0))
            return ok & (rk[b, jc] + off <= rk[b, rc])
        hmin = torch.where(s == 0, p[b, Field.HMIN0], p[b, Field.HMIN1])
        width = torch.where(s == 0, p[b, Field.WIDTH0], p[b, Field.WIDTH1])
        hi = torch.maximum(r + off, hmin)
        return ok & ((j < p[b, Field.PREFIX]) | ((hi - width <= j) & (j < hi)))

    def materialize(self) -> torch.Tensor:
        """Dense bool mask (B, q_len, kv_len), True = may attend: the dense 3D baseline."""
        dev = self.device
        b = torch.arange(self.batch_size, device=dev)[:, None, None]
        i = torch.arange(self.q_len, device=dev)[None, :, None]
        j = torch.arange(self.kv_len, device=dev)[None, None, :]
        return self.allowed(b, i, j)

    # --------------------------------------------------------------- tile class
    def tile_class(self, block_m: int, block_n: int) -> torch.Tensor:
        """Per-tile class (B, ceil(q_len/block_m), ceil(kv_len/block_n)) as int8
        :class:`TileClass` values, computed from the integers (no dense mask).

        A tile covers rows ``[m*block_m, min((m+1)*block_m, q_len))`` and keys
        ``[n*block_n, min((n+1)*block_n, kv_len))``. A tile that straddles the stream
        boundary is classified per stream and the two results are combined.
        """
        if block_m <= 0 or block_n <= 0:
            raise ValueError(f"tile_class: block sizes must be positive, got "
                             f"block_m={block_m}, block_n={block_n}")
        dev = self.device
        nm, nn = -(-self.q_len // block_m), -(-self.kv_len // block_n)
        i0 = torch.arange(nm, device=dev) * block_m
        i1 = torch.clamp(i0 + block_m, max=self.q_len) - 1            # inclusive
        j0 = torch.arange(nn, device=dev) * block_n
        j1 = torch.clamp(j0 + block_n, max=self.kv_len) - 1
        i0, i1 = i0[None, :, None], i1[None, :, None]
        j0, j1 = j0[None, None, :], j1[None, None, :]
        qs = self.q_split
        # stream 0 segment: rows [i0, min(i1, qs-1)]; stream 1: [max(i0, qs), i1] - qs
        c0 = self._segment_class(0, i0, torch.clamp(i1, max=qs - 1), j0, j1)
        c1 = self._segment_class(1, torch.clamp(i0, min=qs) - qs, i1 - qs, j0, j1)
        has0, has1 = i0 < qs, i1 >= qs
        skip = (~has0 | (c0 == TileClass.SKIP)) & (~has1 | (c1 == TileClass.SKIP))
        full = (~has0 | (c0 == TileClass.FULL)) & (~has1 | (c1 == TileClass.FULL))
        out = torch.full(skip.shape, int(TileClass.PARTIAL), dtype=torch.int8, device=dev)
        out[full.expand_as(out)] = int(TileClass.FULL)
        out[skip.expand_as(out)] = int(TileClass.SKIP)
        return out

    def _segment_class(self, s: int, r0, r1, j0, j1) -> torch.Tensor:
        """Class of rows [r0, r1] (local to stream s, may be an empty range) x keys [j0, j1]."""
        p = self.params.long()[:, :, None, None]              # (B, F, 1, 1)
        kv, pre = p[:, Field.KV_LEN], p[:, Field.PREFIX]
        rows = p[:, Field.ROWS0 + 4 * s]
        off = p[:, Field.OFF0 + 4 * s]
        r1v = torch.minimum(r1, rows - 1)                     # last valid row
        any_row = r1v >= r0
        all_rows = r1 < rows
        if self.kind == Kind.PERMUTATION:
            skip, full = self._perm_segment(s, r0, r1v, j0, j1, kv, off)
        else:
            hmin = p[:, Field.HMIN0 + 4 * s]
            width = p[:, Field.WIDTH0 + 4 * s]
            hi_first = torch.maximum(r0 + off, hmin)
            hi_last = torch.maximum(r1v + off, hmin)
            lo_last = torch.maximum(r1 + off, hmin) - width
            jl = torch.minimum(j1, kv - 1)                    # last real key of the tile
            # some row sees some key: prefix hit, or a window value h in [hi_first, hi_last]
            # with j0 < h <= jl + width (h takes every integer in that range)
            win_hit = (width > 0) & (hi_last > j0) & (hi_first <= jl + width)
            skip = (j0 >= kv) | ((j0 >= pre) & ~win_hit)
            full = (j1 < kv) & ((j1 < pre) | (
                (width > 0) & (lo_last <= torch.maximum(j0, pre)) & (j1 < hi_first)))
        cls = torch.full(torch.broadcast_shapes(skip.shape, any_row.shape), int(TileClass.PARTIAL),
                         dtype=torch.int8, device=self.device)
        cls[(full & all_rows & any_row).expand_as(cls)] = int(TileClass.FULL)
        cls[(skip | ~any_row).expand_as(cls)] = int(TileClass.SKIP)
        return cls

    def _perm_segment(self, s, r0, r1v, j0, j1, kv, off):
        """Permutation tiles from per-tile rank min/max (exact: full iff every key rank +
        strict <= every row rank)."""
        rk = self.rank.long()
        B, L = rk.shape
        big = 1 << 40
        # rank min/max over rows [r0, r1v] and keys [j0, min(j1, kv-1)] via masked reductions
        pos = torch.arange(L, device=rk.device)
        nm, nn = r0.shape[1], j0.shape[2]
        rsel = (pos[None, None, :] >= r0[:, :, 0, None]) & (pos[None, None, :] <= r1v[:, :, 0, None])
        rsel = rsel.expand(B, nm, L)
        row_min = torch.where(rsel, rk[:, None, :], big).amin(-1)    # (B, nm)
        row_max = torch.where(rsel, rk[:, None, :], -big).amax(-1)
        jl = torch.minimum(j1, kv - 1)
        ksel = (pos[None, None, :] >= j0[:, 0, :, None]) & (pos[None, None, :] <= jl[:, 0, :, None])
        ksel = ksel.expand(B, nn, L)
        key_min = torch.where(ksel, rk[:, None, :], big).amin(-1)    # (B, nn)
        key_max = torch.where(ksel, rk[:, None, :], -big).amax(-1)
        o = off[:, 0, 0][:, None, None]
        skip = (j0 >= kv) | (key_min[:, None, :] + o > row_max[:, :, None])
        full = (j1 < kv) & (key_max[:, None, :] + o <= row_min[:, :, None])
        return skip, full

    # ----------------------------------------------------------------- checks
    def check(self, batch_size: int, q_len: int, kv_len: int, device: torch.device) -> None:
        """Raise a clear error if this descriptor does not fit q (B, *, q_len, *) and
        k (B, *, kv_len, *) on ``device``."""
        if self.batch_size != batch_size:
            raise ValueError(f"mask: descriptor batch size {self.batch_size} != B={batch_size}")
        if self.q_len != q_len or self.kv_len != kv_len:
            raise ValueError(f"mask: descriptor was built for q_len={self.q_len}, "
                             f"kv_len={self.kv_len} but q has {q_len} rows and k has "
                             f"{kv_len} keys; build the descriptor for the padded sizes")
        if self.params.device != torch.device(device):
            raise ValueError(f"mask: descriptor is on {self.params.device} but q is on "
                             f"{device}; call mask.to(q.device)")


# ============================================================================ factories
def _ints(x: IntsLike, B: Optional[int], name: str, device=None) -> torch.Tensor:
    if isinstance(x, int):
        if B is None:
            raise ValueError(f"{name}: an int needs the batch size to be known")
        t = torch.full((B,), x, dtype=torch.int64, device=device)
    else:
        t = torch.as_tensor(x, device=device)
        if t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
            raise ValueError(f"{name}: expected integer values, got dtype {t.dtype}")
        t = t.long()
    if t.dim() != 1:
        raise ValueError(f"{name}: expected a 1-D tensor of per-sample integers, "
                         f"got shape {tuple(t.shape)}")
    if B is not None and t.shape[0] != B:
        raise ValueError(f"{name}: expected {B} per-sample values, got {t.shape[0]}")
    if t.numel() and bool((t < 0).any()):
        raise ValueError(f"{name}: per-sample counts must be >= 0, got {t.tolist()}")
    return t


def _max_or(t: torch.Tensor, default: int = 0) -> int:
    return int(t.max()) if t.numel() else default


def _build(B: int, device, **cols) -> torch.Tensor:
    p = torch.zeros(B, NUM_FIELDS, dtype=torch.int64, device=device)
    for name, val in cols.items():
        p[:, int(Field[name])] = val
    return p.to(torch.int32)


def _check_le(t: torch.Tensor, bound: int, name: str, what: str) -> None:
    if t.numel() and int(t.max()) > bound:
        raise ValueError(f"{name}: values {t.tolist()} exceed {what} = {bound}")


def full_mask(batch_size: int, q_len: int, kv_len: int, *, device=None) -> MaskDescriptor:
    """Every row sees every key (no masking)."""
    p = _build(batch_size, device, KV_LEN=kv_len, PREFIX=kv_len, ROWS0=q_len)
    return MaskDescriptor(p, q_len, kv_len, q_len, family="full")


def key_padding_mask(kv_lengths: IntsLike, q_len: int, kv_len: Optional[int] = None, *,
                     q_lengths: Optional[IntsLike] = None, device=None) -> MaskDescriptor:
    """Varlen / key padding: row i of sample b sees keys [0, kv_lengths[b]).

    Rows ``>= q_lengths[b]`` (if given) are padding and produce zeros; without
    ``q_lengths`` every row is computed, as ``nn.MultiheadAttention`` does.
    """
    kvl = _ints(kv_lengths, None, "kv_lengths", device)
    B = kvl.shape[0]
    kv_len = _max_or(kvl) if kv_len is None else kv_len
    _check_le(kvl, kv_len, "kv_lengths", "kv_len")
    ql = torch.full_like(kvl, q_len) if q_lengths is None else _ints(q_lengths, B, "q_lengths", kvl.device)
    _check_le(ql, q_len, "q_lengths", "q_len")
    p = _build(B, kvl.device, KV_LEN=kvl, PREFIX=kvl, ROWS0=ql)
    return MaskDescriptor(p, q_len, kv_len, q_len, family="key_padding")


def causal_mask(lengths: IntsLike, seq_len: Optional[int] = None, *,
                kv_lengths: Optional[IntsLike] = None, kv_len: Optional[int] = None,
                window: Optional[int] = None, device=None) -> MaskDescriptor:
    """Causal (lower-triangular, diagonal included) with per-sample lengths.

    Row i of sample b sees keys ``j <= i + (kv_lengths[b] - lengths[b])`` (bottom-right
    aligned when the key length differs, as FlashAttention), ``j < kv_lengths[b]``, and,
    with ``window``, only the last ``window`` of those keys. Rows ``>= lengths[b]`` are
    padding (zeros).
    """
    ql = _ints(lengths, None, "lengths", device)
    B = ql.shape[0]
    seq_len = _max_or(ql) if seq_len is None else seq_len
    _check_le(ql, seq_len, "lengths", "seq_len")
    kvl = ql if kv_lengths is None else _ints(kv_lengths, B, "kv_lengths", ql.device)
    kv_len = seq_len if kv_len is None and kv_lengths is None else (
        _max_or(kvl) if kv_len is None else kv_len)
    _check_le(kvl, kv_len, "kv_lengths", "kv_len")
    if window is not None and window < 1:
        raise ValueError(f"window: expected a positive window size, got {window}")
    width = UNBOUNDED if window is None else window
    p = _build(B, ql.device, KV_LEN=kvl, ROWS0=ql, OFF0=1 + kvl - ql, WIDTH0=width)
    fam = "causal" if window is None else "sliding_window"
    return MaskDescriptor(p, seq_len, kv_len, seq_len, family=fam)


def sliding_window_mask(lengths: IntsLike, window: int, seq_len: Optional[int] = None, *,
                        device=None) -> MaskDescriptor:
    """Causal sliding window: row i sees keys (i - window, i]."""
    return causal_mask(lengths, seq_len, window=window, device=device)


def prefix_lm_mask(prefix_lengths: IntsLike, lengths: IntsLike, seq_len: Optional[int] = None,
                   *, device=None) -> MaskDescriptor:
    """Prefix-LM: keys ``j < prefix_lengths[b]`` are visible to every row; after the prefix
    the mask is causal."""
    ql = _ints(lengths, None, "lengths", device)
    B = ql.shape[0]
    pre = _ints(prefix_lengths, B, "prefix_lengths", ql.device)
    if bool((pre > ql).any()):
        raise ValueError(f"prefix_lengths: {pre.tolist()} exceed lengths {ql.tolist()}")
    seq_len = _max_or(ql) if seq_len is None else seq_len
    _check_le(ql, seq_len, "lengths", "seq_len")
    p = _build(B, ql.device, KV_LEN=ql, PREFIX=pre, ROWS0=ql, OFF0=1, WIDTH0=UNBOUNDED)
    return MaskDescriptor(p, seq_len, seq_len, seq_len, family="prefix_lm")


def janus_nar_mask(unmasked: IntsLike, masked: IntsLike, content_len: Optional[int] = None,
                   query_len: Optional[int] = None, *, device=None) -> MaskDescriptor:
    """The JANUS NAR/AUX two-stream mask (spec §3.3) from per-sample U and M.

    Rows are ``[content rows (content_len) ; query rows (query_len)]``, keys are the
    content rows. Content per sample is ``V (U) | M (M masks) | G (M ground truth)``, so
    ``U + 2M <= content_len`` and ``M <= query_len``. Every real row sees exactly ``U + M``
    keys: the prefix ``[0, U)`` and one window of width ``M``. Padding rows give zeros.
    """
    U = _ints(unmasked, None, "unmasked (U)", device)
    B = U.shape[0]
    M = _ints(masked, B, "masked (M)", U.device)
    a = U + 2 * M
    content_len = _max_or(a) if content_len is None else content_len
    query_len = _max_or(M) if query_len is None else query_len
    _check_le(a, content_len, "unmasked + 2*masked (U + 2M)", "content_len")
    _check_le(M, query_len, "masked (M)", "query_len")
    p = _build(B, U.device, KV_LEN=a, PREFIX=U,
               ROWS0=a, OFF0=1, HMIN0=U + M, WIDTH0=M,
               ROWS1=M, OFF1=U + M, HMIN1=0, WIDTH1=M)
    return MaskDescriptor(p, content_len + query_len, content_len, content_len,
                          family="janus_nar")


def janus_ar_mask(lengths: IntsLike, seq_len: Optional[int] = None, *,
                  device=None) -> MaskDescriptor:
    """The JANUS AR two-stream mask (spec §3.1): rows ``[content (seq_len) ; query
    (seq_len)]``, keys = content; both streams causal (diagonal included) over the
    ``lengths[b] = N_b + 1`` real content entries."""
    T = _ints(lengths, None, "lengths", device)
    B = T.shape[0]
    seq_len = _max_or(T) if seq_len is None else seq_len
    _check_le(T, seq_len, "lengths", "seq_len")
    p = _build(B, T.device, KV_LEN=T, ROWS0=T, OFF0=1, WIDTH0=UNBOUNDED,
               ROWS1=T, OFF1=1, WIDTH1=UNBOUNDED)
    return MaskDescriptor(p, 2 * seq_len, seq_len, seq_len, family="janus_ar")


def permutation_mask(rank: torch.Tensor, lengths: Optional[IntsLike] = None, *,
                     two_stream: bool = True) -> MaskDescriptor:
    """Permutation-LM (XLNet / MPNet / JANUS random order, spec §3.5 / §8.12).

    ``rank`` (B, L) gives each position's place in the factorization order. Content row i
    sees key j iff ``rank[j] <= rank[i]``; with ``two_stream`` a second block of L query
    rows follows, where query row i sees j iff ``rank[j] < rank[i]`` (so the first query in
    the order sees nothing and outputs zeros). Keys/rows ``>= lengths[b]`` are padding.
    """
    if not isinstance(rank, torch.Tensor) or rank.dim() != 2 or rank.dtype.is_floating_point:
        raise ValueError(f"rank: expected an integer tensor (B, L), got {_describe(rank)}")
    B, L = rank.shape
    ln = torch.full((B,), L, dtype=torch.long, device=rank.device) if lengths is None \
        else _ints(lengths, B, "lengths", rank.device)
    _check_le(ln, L, "lengths", "rank.shape[1]")
    p = _build(B, rank.device, KV_LEN=ln, ROWS0=ln, OFF0=0,
               ROWS1=ln if two_stream else 0, OFF1=1)
    q_len = 2 * L if two_stream else L
    return MaskDescriptor(p, q_len, L, L, kind=Kind.PERMUTATION,
                          rank=rank.to(torch.int32).contiguous(), family="permutation")


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor(dtype={x.dtype}, shape={tuple(x.shape)}, device={x.device})"
    return type(x).__name__
