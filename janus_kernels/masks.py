"""Mask descriptors: structured attention masks as a few integers per sample.

A :class:`MaskDescriptor` never holds a ``(B, Lq, Lk)`` tensor. It holds an int32
table ``params`` of shape ``(B, NUM_FIELDS)`` (and an int32 side table ``rank``: for the
permutation kind the ``(B, Lk)`` ranks, for the documents kind the ``(B, Lq + Lk)`` row
then key document ids). Every backend (the dense reference,
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
    valid_key = KEY_START <= j < KV_LEN     # left and right key padding
    hi = max(r + OFF[s], HMIN[s])           # nondecreasing in r
    lo = hi - WIDTH[s]                      # WIDTH = 0: no window; UNBOUNDED: [0, hi)
    allowed = valid_row and valid_key and (j < PREFIX or lo <= j < hi)
    DOCUMENTS kind: allowed = allowed and q_doc[i] == k_doc[j]   (packed sequences)

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
    HF / torch           hf_mask: causal / sliding / chunked / bidirectional, key padding
                         [KEY_START, KV_LEN), diagonal offset (mask_factories_hf.py)
    packed documents     document_mask, varlen_mask (the DOCUMENTS kind)

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
from typing import Optional, Sequence, Union

import torch

from .mask_checks import (check_documents, check_rank, check_structure, check_table,
                          describe as _describe,
                          int_arg, rank_read_extent, set_descriptor_checks,
                          values_checkable)
from .mask_fields import NUM_FIELDS, UNBOUNDED, Field, Kind, TileClass

__all__ = [
    "UNBOUNDED", "Field", "Kind", "TileClass", "MaskDescriptor", "set_descriptor_checks",
    "full_mask", "key_padding_mask", "causal_mask", "sliding_window_mask", "prefix_lm_mask",
    "janus_nar_mask", "janus_ar_mask", "permutation_mask", "hf_mask", "document_mask",
    "varlen_mask",
]

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
    rank: Optional[torch.Tensor] = None  # int32 side table: (B, kv_len) permutation ranks,
                                         # (B, q_len + kv_len) documents (rows, then keys)
    family: str = "custom"

    def __post_init__(self) -> None:
        q_len, kv_len, q_split, kind = check_structure(
            self.params, self.rank, self.q_len, self.kv_len, self.q_split, self.kind)
        # frozen: normalize through object.__setattr__ (numpy ints -> int, int -> Kind; the
        # kernels index the tables as dense row-major arrays)
        for name, val in (("q_len", q_len), ("kv_len", kv_len), ("q_split", q_split),
                          ("kind", kind), ("params", self.params.contiguous()),
                          ("rank", None if self.rank is None else self.rank.contiguous())):
            object.__setattr__(self, name, val)
        if values_checkable(self.params):
            self.validate()

    def validate(self) -> None:
        """Check every value against the contract (``janus_kernels.mask_checks``) and raise a
        ValueError naming the field and the sample. O(B) (O(B * width) with a side table); a
        host sync when the tables live on a GPU. A table already checked and not modified
        since (torch's in-place version counter) is not read again."""
        version = (self.params._version, None if self.rank is None else self.rank._version)
        if self.__dict__.get("_checked_version") == version:
            return
        check_table(self.params, self.q_len, self.kv_len, self.q_split, self.kind)
        if self.kind == Kind.PERMUTATION:
            check_rank(self.rank, rank_read_extent(self.params))
        elif self.kind == Kind.DOCUMENTS:
            check_documents(self.rank, self.q_len)
        object.__setattr__(self, "_checked_version", version)   # frozen dataclass

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
        ok = (r < rows) & (j < p[b, Field.KV_LEN]) & (j >= p[b, Field.KEY_START])
        if self.kind == Kind.PERMUTATION:
            rk = self.rank.long()
            jc = j.clamp(max=max(self.kv_len - 1, 0))
            rc = r.clamp(max=max(self.kv_len - 1, 0))
            return ok & (rk[b, jc] + off <= rk[b, rc])
        hmin = torch.where(s == 0, p[b, Field.HMIN0], p[b, Field.HMIN1])
        width = torch.where(s == 0, p[b, Field.WIDTH0], p[b, Field.WIDTH1])
        hi = torch.maximum(r + off, hmin)
        ok = ok & ((j < p[b, Field.PREFIX]) | ((hi - width <= j) & (j < hi)))
        if self.kind == Kind.DOCUMENTS:
            q_doc, k_doc = self._docs()
            ok = ok & (q_doc[b, i.clamp(0, max(self.q_len - 1, 0))]
                       == k_doc[b, j.clamp(0, max(self.kv_len - 1, 0))])
        return ok

    def _docs(self):
        """(row documents (B, q_len), key documents (B, kv_len)) of the DOCUMENTS kind."""
        d = self.rank.long()
        return d[:, :self.q_len], d[:, self.q_len:]

    def valid_rows(self) -> torch.Tensor:
        """(B, q_len) bool: the rows that are not padding (``r < ROWS[s]``). Every other row
        sees no key and outputs zeros, so a caller may leave it out of its row-wise work."""
        p = self.params.long()
        i = torch.arange(self.q_len, device=self.device)
        s = i >= self.q_split
        rows = torch.where(s[None, :], p[:, Field.ROWS1, None], p[:, Field.ROWS0, None])
        return (i - s.long() * self.q_split)[None, :] < rows

    def valid_keys(self) -> torch.Tensor:
        """(B, kv_len) bool: the keys that are not padding (``KEY_START <= j < KV_LEN``); no
        row sees any other key, so what a padding key / value holds never matters."""
        p = self.params.long()
        j = torch.arange(self.kv_len, device=self.device)[None, :]
        return (j >= p[:, Field.KEY_START, None]) & (j < p[:, Field.KV_LEN, None])

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
        boundary is classified per stream and the two results are combined. Exact for the
        window and permutation kinds; for documents exact-or-conservative: SKIP also when
        the document ranges of the segment's corner rows and the tile's corner keys are
        disjoint, FULL only when all four corner documents are equal.
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
        ks = p[:, Field.KEY_START]
        j0k = torch.maximum(j0, ks)                           # first real key of the tile
        rows = p[:, Field.ROWS0 + 4 * s]
        off = p[:, Field.OFF0 + 4 * s]
        r1v = torch.minimum(r1, rows - 1)                     # last valid row
        any_row = r1v >= r0
        all_rows = r1 < rows
        if self.kind == Kind.PERMUTATION:
            skip, full = self._perm_segment(s, r0, r1v, j0k, j1, kv, off)
        else:
            hmin = p[:, Field.HMIN0 + 4 * s]
            width = p[:, Field.WIDTH0 + 4 * s]
            hi_first = torch.maximum(r0 + off, hmin)
            hi_last = torch.maximum(r1v + off, hmin)
            lo_last = torch.maximum(r1 + off, hmin) - width
            jl = torch.minimum(j1, kv - 1)                    # last real key of the tile
            # some row sees some key: prefix hit, or a window value h in [hi_first, hi_last]
            # with j0k < h <= jl + width (h takes every integer in that range)
            win_hit = (width > 0) & (hi_last > j0k) & (hi_first <= jl + width)
            skip = (j0k > jl) | ((j0k >= pre) & ~win_hit)
            full = (j1 < kv) & ((j1 < pre) | (
                (width > 0) & (lo_last <= torch.maximum(j0, pre)) & (j1 < hi_first)))
            if self.kind == Kind.DOCUMENTS:
                skip, full = self._doc_segment(s, r0, r1v, j0k, jl, skip, full)
        full = full & (j0 >= ks)
        cls = torch.full(torch.broadcast_shapes(skip.shape, any_row.shape), int(TileClass.PARTIAL),
                         dtype=torch.int8, device=self.device)
        cls[(full & all_rows & any_row).expand_as(cls)] = int(TileClass.FULL)
        cls[(skip | ~any_row).expand_as(cls)] = int(TileClass.SKIP)
        return cls

    def _doc_segment(self, s, r0, r1v, j0k, jl, skip, full):
        """Documents on top of the window class, from the corner documents of the segment's
        valid rows [r0, r1v] and the tile's real keys [j0k, jl] (both runs are nondecreasing):
        SKIP if their document ranges are disjoint, FULL only if all four are equal. (Where
        the window already says SKIP the indices may be out of range: clamped, unused.)"""
        q_doc, k_doc = self._docs()
        B, nm, nn = self.batch_size, r0.shape[1], j0k.shape[2]

        def pick(table, idx, n):
            idx = idx.reshape(idx.shape[0], n).expand(B, n)
            return table.gather(1, idx.clamp(0, max(table.shape[1] - 1, 0)))

        base = s * self.q_split
        qa = pick(q_doc, r0 + base, nm)[:, :, None]
        qb = pick(q_doc, r1v + base, nm)[:, :, None]
        ka = pick(k_doc, j0k, nn)[:, None, :]
        kb = pick(k_doc, jl, nn)[:, None, :]
        disjoint = (qb < ka) | (kb < qa)
        same = (qa == qb) & (ka == kb) & (qa == ka)
        return skip | disjoint, full & same

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
        k (B, *, kv_len, *) on ``device``, or (when its values may be read, see
        ``mask_checks.values_checkable``) breaks the value contract -- checked again here
        because the tables are tensors and may have been edited in place."""
        if self.batch_size != batch_size:
            raise ValueError(f"mask: descriptor batch size {self.batch_size} != B={batch_size}")
        if self.q_len != q_len or self.kv_len != kv_len:
            raise ValueError(f"mask: descriptor was built for q_len={self.q_len}, "
                             f"kv_len={self.kv_len} but q has {q_len} rows and k has "
                             f"{kv_len} keys; build the descriptor for the padded sizes")
        if self.params.device != torch.device(device):
            raise ValueError(f"mask: descriptor is on {self.params.device} but q is on "
                             f"{device}; call mask.to(q.device)")
        if values_checkable(self.params):
            self.validate()


# ============================================================================ factories
# Every factory builds an int64 table, checks it against the contract while values beyond
# int32 are still visible (so e.g. U = 2**31 raises instead of wrapping), then casts. Value
# checks read the per-sample tensors, so they run only where that is free (CPU) or asked for
# (``set_descriptor_checks``): with GPU lengths and explicit sizes a factory never syncs;
# leaving a size to be inferred (``seq_len=None`` ...) reads the maximum, one sync.
def _ints(x: IntsLike, B: Optional[int], name: str, device=None) -> torch.Tensor:
    if isinstance(x, bool) or (not isinstance(x, (torch.Tensor, int)) and not _is_seq(x)):
        x = int_arg(x, name)          # raises TypeError for floats, bools, None, ...
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
    if t.numel() and values_checkable(t) and bool((t < 0).any()):
        raise ValueError(f"{name}: per-sample counts must be >= 0, got {t.tolist()}")
    return t


def _is_seq(x) -> bool:
    return isinstance(x, Sequence) and not isinstance(x, str) or hasattr(x, "__array__")


def _size(given, t: torch.Tensor, name: str) -> int:
    """A padded size: the given one (an integer in [0, 2^30]) or the maximum of ``t`` (one
    host sync for GPU tensors)."""
    if given is not None:
        return int_arg(given, name)
    return int_arg(int(t.max()) if t.numel() else 0, f"{name} (inferred as the maximum)")


def _check_le(t: torch.Tensor, bound: int, name: str, what: str) -> None:
    if t.numel() and values_checkable(t) and int(t.max()) > bound:
        raise ValueError(f"{name}: values {t.tolist()} exceed {what} = {bound}")


def _make(B: int, device, q_len: int, kv_len: int, q_split: int, family: str,
          kind: Kind = Kind.WINDOW, rank: Optional[torch.Tensor] = None,
          **cols) -> MaskDescriptor:
    """Build the int64 table from per-field columns, check it before the int32 cast."""
    p = torch.zeros(B, NUM_FIELDS, dtype=torch.int64, device=device)
    for name, val in cols.items():
        p[:, int(Field[name])] = val
    if values_checkable(p):
        check_table(p, q_len, kv_len, q_split, kind, what=f"{family} descriptor")
    return MaskDescriptor(p.to(torch.int32), q_len, kv_len, q_split, kind, rank, family)


def full_mask(batch_size: int, q_len: int, kv_len: int, *, device=None) -> MaskDescriptor:
    """Every row sees every key (no masking)."""
    B = int_arg(batch_size, "batch_size", maximum=(1 << 62))
    q_len, kv_len = int_arg(q_len, "q_len"), int_arg(kv_len, "kv_len")
    return _make(B, device, q_len, kv_len, q_len, "full",
                 KV_LEN=kv_len, PREFIX=kv_len, ROWS0=q_len)


def key_padding_mask(kv_lengths: IntsLike, q_len: int, kv_len: Optional[int] = None, *,
                     q_lengths: Optional[IntsLike] = None, device=None) -> MaskDescriptor:
    """Varlen / key padding: row i of sample b sees keys [0, kv_lengths[b]).

    Rows ``>= q_lengths[b]`` (if given) are padding and produce zeros; without
    ``q_lengths`` every row is computed, as ``nn.MultiheadAttention`` does.
    """
    kvl = _ints(kv_lengths, None, "kv_lengths", device)
    B = kvl.shape[0]
    q_len = int_arg(q_len, "q_len")
    kv_len = _size(kv_len, kvl, "kv_len")
    _check_le(kvl, kv_len, "kv_lengths", "kv_len")
    ql = torch.full_like(kvl, q_len) if q_lengths is None else _ints(q_lengths, B, "q_lengths", kvl.device)
    _check_le(ql, q_len, "q_lengths", "q_len")
    return _make(B, kvl.device, q_len, kv_len, q_len, "key_padding",
                 KV_LEN=kvl, PREFIX=kvl, ROWS0=ql)


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
    seq_len = _size(seq_len, ql, "seq_len")
    _check_le(ql, seq_len, "lengths", "seq_len")
    kvl = ql if kv_lengths is None else _ints(kv_lengths, B, "kv_lengths", ql.device)
    kv_len = seq_len if kv_len is None and kv_lengths is None else _size(kv_len, kvl, "kv_len")
    _check_le(kvl, kv_len, "kv_lengths", "kv_len")
    if window is not None:
        window = int_arg(window, "window", minimum=1)
    width = UNBOUNDED if window is None else window
    fam = "causal" if window is None else "sliding_window"
    return _make(B, ql.device, seq_len, kv_len, seq_len, fam,
                 KV_LEN=kvl, ROWS0=ql, OFF0=1 + kvl - ql, WIDTH0=width)


def sliding_window_mask(lengths: IntsLike, window: int, seq_len: Optional[int] = None, *,
                        device=None) -> MaskDescriptor:
    """Causal sliding window: row i sees keys (i - window, i]."""
    if window is None:
        raise TypeError("window: expected a positive integer window size, got None")
    return causal_mask(lengths, seq_len, window=window, device=device)


def prefix_lm_mask(prefix_lengths: IntsLike, lengths: IntsLike, seq_len: Optional[int] = None,
                   *, device=None) -> MaskDescriptor:
    """Prefix-LM: keys ``j < prefix_lengths[b]`` are visible to every row; after the prefix
    the mask is causal."""
    ql = _ints(lengths, None, "lengths", device)
    B = ql.shape[0]
    pre = _ints(prefix_lengths, B, "prefix_lengths", ql.device)
    if values_checkable(pre) and bool((pre > ql).any()):
        raise ValueError(f"prefix_lengths: {pre.tolist()} exceed lengths {ql.tolist()}")
    seq_len = _size(seq_len, ql, "seq_len")
    _check_le(ql, seq_len, "lengths", "seq_len")
    return _make(B, ql.device, seq_len, seq_len, seq_len, "prefix_lm",
                 KV_LEN=ql, PREFIX=pre, ROWS0=ql, OFF0=1, WIDTH0=UNBOUNDED)


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
    content_len = _size(content_len, a, "content_len")
    query_len = _size(query_len, M, "query_len")
    _check_le(a, content_len, "unmasked + 2*masked (U + 2M)", "content_len")
    _check_le(M, query_len, "masked (M)", "query_len")
    return _make(B, U.device, int_arg(content_len + query_len, "content_len + query_len"),
                 content_len, content_len, "janus_nar",
                 KV_LEN=a, PREFIX=U, ROWS0=a, OFF0=1, HMIN0=U + M, WIDTH0=M,
                 ROWS1=M, OFF1=U + M, HMIN1=0, WIDTH1=M)


def janus_ar_mask(lengths: IntsLike, seq_len: Optional[int] = None, *,
                  device=None) -> MaskDescriptor:
    """The JANUS AR two-stream mask (spec §3.1): rows ``[content (seq_len) ; query
    (seq_len)]``, keys = content; both streams causal (diagonal included) over the
    ``lengths[b] = N_b + 1`` real content entries."""
    T = _ints(lengths, None, "lengths", device)
    B = T.shape[0]
    seq_len = _size(seq_len, T, "seq_len")
    _check_le(T, seq_len, "lengths", "seq_len")
    return _make(B, T.device, int_arg(2 * seq_len, "2 * seq_len"), seq_len, seq_len,
                 "janus_ar", KV_LEN=T, ROWS0=T, OFF0=1, WIDTH0=UNBOUNDED,
                 ROWS1=T, OFF1=1, WIDTH1=UNBOUNDED)


def permutation_mask(rank: torch.Tensor, lengths: Optional[IntsLike] = None, *,
                     two_stream: bool = True) -> MaskDescriptor:
    """Permutation-LM (XLNet / MPNet / JANUS random order, spec §3.5 / §8.12).

    ``rank`` (B, L) gives each position's place in the factorization order. Content row i
    sees key j iff ``rank[j] <= rank[i]``; with ``two_stream`` a second block of L query
    rows follows, where query row i sees j iff ``rank[j] < rank[i]`` (so the first query in
    the order sees nothing and outputs zeros). Keys/rows ``>= lengths[b]`` are padding.
    Ranks (at the real positions) must lie in [-2^30, 2^30).
    """
    if not isinstance(rank, torch.Tensor) or rank.dim() != 2 or rank.dtype.is_floating_point \
            or rank.dtype == torch.bool or rank.is_complex():
        raise ValueError(f"rank: expected an integer tensor (B, L), got {_describe(rank)}")
    if not isinstance(two_stream, bool):
        raise TypeError(f"two_stream: expected a bool, got {two_stream!r}")
    B, L = rank.shape
    L = int_arg(L, "rank.shape[1]")
    ln = torch.full((B,), L, dtype=torch.long, device=rank.device) if lengths is None \
        else _ints(lengths, B, "lengths", rank.device)
    _check_le(ln, L, "lengths", "rank.shape[1]")
    if values_checkable(rank):      # before the int32 cast, which would wrap 2**31 to -2**31
        check_rank(rank, ln, what="rank")
    q_len = 2 * L if two_stream else L
    return _make(B, rank.device, q_len, L, L, "permutation", Kind.PERMUTATION,
                 rank.to(torch.int32).contiguous(), KV_LEN=ln, ROWS0=ln, OFF0=0,
                 ROWS1=ln if two_stream else 0, OFF1=1)


# The HF / packed-sequence factories live in their own module (they import _make from here).
from .mask_factories_hf import document_mask, hf_mask, varlen_mask  # noqa: E402
