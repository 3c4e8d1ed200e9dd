"""Packed decoder rows: a training pass's row-wise work on its live rows only.

A decoder pass lays its rows out padded, (B, R): every sample gets the batch's largest count
of content rows and of query rows. In the NAR/AUX pass that is a lot of padding -- the
content is padded to max_b (U + 2M - 1) and the queries to max_b M, with M drawn anywhere in
1..N -- about 17% of its rows at the authors' IWSLT batch, against 8% for CMLM's. The
projections, LayerNorms, FFN and dropout are row-wise, so they run here on the live rows
alone, packed batch-major as (N, D). Only attention needs the padded layout: each call
scatters its projected queries (and the content rows' keys and values) into zero-filled
padded buffers and gathers its output rows back (``MultiheadAttention.rows``).

The live rows follow from the self-attention descriptor alone: rows it does not call padding
(``MaskDescriptor.valid_rows``) and content rows that are keys (``valid_keys``). A padding
row sees no key and is no key, so no live row depends on it at any layer: the packed pass
gives every live row the state the padded pass gives it (tests/test_packing.py), and a loss
reads only live rows. The encoder attention of the packed rows uses a compact layout of
its own, (B, max_b live rows), whose padding rows the kernel skips (``q_lengths``).

The encoder packs the same way (``SourceRows``): its layers run on the real source tokens,
its self-attention skips the padding rows, and the decoder's encoder-attention keys and
values are projected from the real rows only (``JanusTransformer.encoder_kv``).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from janus_kernels.masks import MaskDescriptor

__all__ = ["LayerRows", "PackedPass", "SourceRows", "plan_packed_pass", "plan_for",
           "source_rows", "head_index", "scatter_heads", "gather_heads", "scatter_rows"]

Tensor = torch.Tensor


def scatter_rows(rows: Tensor, flat: Tensor, B: int, L: int) -> Tensor:
    """(N, D) rows -> (B, L, D) with row n at flat index ``flat[n]`` and zeros elsewhere
    (differentiable; its backward is an index_select)."""
    out = rows.new_zeros(B * L, rows.shape[-1])
    return out.index_copy_(0, flat, rows).view(B, L, rows.shape[-1])


def head_index(flat: Tensor, L: int, H: int) -> Tensor:
    """(N * H,) row indices into a (B * H * L, d) view of a contiguous (B, H, L, d) tensor:
    head ``h`` of packed row ``n`` (at ``flat[n] = b * L + r``) is row (b * H + h) * L + r."""
    b, r = torch.div(flat, L, rounding_mode="floor"), flat % L
    h = torch.arange(H, device=flat.device)
    return ((b[:, None] * H + h[None, :]) * L + r[:, None]).reshape(-1)


def scatter_heads(rows: Tensor, index: Tensor, B: int, H: int, L: int) -> Tensor:
    """Packed (N, H * d) rows -> contiguous (B, H, L, d) heads, zeros on the other rows
    (``index`` from ``head_index``; differentiable, its backward an index_select)."""
    d = rows.shape[-1] // H
    out = rows.new_zeros(B * H * L, d)
    return out.index_copy_(0, index, rows.reshape(-1, d)).view(B, H, L, d)


def gather_heads(heads: Tensor, index: Tensor) -> Tensor:
    """(B, H, L, d) heads -> the packed (N, H * d) rows of ``index`` (``head_index``)."""
    H, d = heads.shape[1], heads.shape[3]
    return heads.reshape(-1, d).index_select(0, index).view(-1, H * d)


def _memo_heads(cache: dict, key: str, flat: Tensor, L: int, H: int) -> Tensor:
    """head_index, computed once per (layout, H): every layer of a pass reuses it."""
    if (key, H) not in cache:
        cache[key, H] = head_index(flat, L, H)
    return cache[key, H]


@dataclasses.dataclass
class SourceRows:
    """The real rows of a right-padded source (B, S): ``flat`` (N,) = b * S + r for
    r < lengths[b], the rows the encoder's key-padding mask calls real (so the packed encoder
    computes exactly what the padded one computes for them)."""

    B: int
    S: int
    flat: Tensor
    lengths: Tensor          # (B,) the real tokens per sample it was planned for
    _heads: dict = dataclasses.field(default_factory=dict, repr=False)

    def heads(self, H: int) -> Tensor:
        """``head_index`` of the real rows in a (B, H, S, d) layout."""
        return _memo_heads(self._heads, "src", self.flat, self.S, H)

    def check(self, lengths: Tensor, S: int) -> None:
        """Raise unless this plan was made for a (B, S) source with these per-sample
        ``lengths`` (inside torch.compile: a runtime assertion, as the values are data)."""
        if tuple(lengths.shape) != (self.B,) or S != self.S:
            raise ValueError(f"src: the batch's packing was planned for a (B={self.B}, "
                             f"S={self.S}) source (plan_packing(src=...)), got "
                             f"({tuple(lengths.shape)[0]}, {S})")
        same = (lengths == self.lengths.to(lengths.device)).all()
        if torch.compiler.is_compiling():
            torch._assert_async(same, "src: not the source the batch's packing was planned for")
        elif not bool(same):
            raise ValueError("src: not the source the batch's packing was planned for "
                             "(plan_packing(src=...) saw other lengths)")


def source_rows(lengths: Tensor, S: int) -> SourceRows:
    """The ``SourceRows`` of a (B, S) source with ``lengths`` real tokens per sample."""
    real = torch.arange(S, device=lengths.device)[None, :] < lengths[:, None]
    return SourceRows(int(lengths.shape[0]), S, real.reshape(-1).nonzero().squeeze(1),
                      lengths)


@dataclasses.dataclass
class LayerRows:
    """The rows one layer computes: packed (N, D) rows, row ``n`` being row
    ``q_flat[n] % q_len`` of sample ``q_flat[n] // q_len`` of the self-attention layout."""

    B: int
    q_len: int               # rows of the self-attention layout (its descriptor's q_len)
    q_flat: Tensor           # (N,) b * q_len + r of each computed row
    take: Optional[Tensor]   # (N,) their positions among the layer's input rows; None: all
    enc_len: int             # rows of the compact encoder-attention layout
    enc_flat: Tensor         # (N,) b * enc_len + (rank of the row within its sample)
    enc_rows: Tensor         # (B,) computed rows per sample (the encoder attention's q_lengths)
    _heads: dict = dataclasses.field(default_factory=dict, repr=False)

    def q_heads(self, H: int) -> Tensor:
        """``head_index`` of the computed rows in the self-attention layout."""
        return _memo_heads(self._heads, "q", self.q_flat, self.q_len, H)

    def enc_heads(self, H: int) -> Tensor:
        """``head_index`` of the computed rows in the compact encoder-attention layout."""
        return _memo_heads(self._heads, "enc", self.enc_flat, self.enc_len, H)


@dataclasses.dataclass
class PackedPass:
    """A pass over the live rows of a (B, R) row layout: ``live_flat`` (N,) are their flat
    indices b * R + r, batch-major; ``kv_src`` / ``kv_flat`` place the live content rows'
    keys and values (their positions among the packed rows / b * n_content + r); ``body`` is
    every layer's rows, ``last`` the last layer's when it computes only the output rows."""

    B: int
    R: int
    n_content: int
    live_flat: Tensor
    kv_src: Tensor
    kv_flat: Tensor
    body: LayerRows
    last: Optional[LayerRows]
    _heads: dict = dataclasses.field(default_factory=dict, repr=False)

    def kv_heads(self, H: int) -> Tensor:
        """``head_index`` of the live content rows in the (B, H, n_content, d) key layout."""
        return _memo_heads(self._heads, "kv", self.kv_flat, self.n_content, H)

    def final_rows(self) -> LayerRows:
        return self.body if self.last is None else self.last


def _layer_rows(flat: Tensor, B: int, L: int, take: Optional[Tensor]) -> LayerRows:
    b = torch.div(flat, L, rounding_mode="floor")
    counts = torch.bincount(b, minlength=B)
    start = counts.cumsum(0) - counts
    enc_len = int(counts.max()) if B and flat.numel() else 0
    rank = torch.arange(flat.numel(), device=flat.device) - start[b]
    return LayerRows(B=B, q_len=L, q_flat=flat, take=take, enc_len=enc_len,
                     enc_flat=b * enc_len + rank, enc_rows=counts)


def plan_packed_pass(mask: MaskDescriptor, n_content: int,
                     last: Optional[tuple] = None) -> PackedPass:
    """The packed pass of a (B, R = mask.q_len) row layout whose first ``n_content`` rows are
    the keys (``mask.kv_len == n_content``). ``last``: ``(out_rows (B, R_out), out_mask)``
    when the last layer computes only the output rows (``out_mask``: their descriptor); its
    padding rows are left out too."""
    B, R = mask.batch_size, mask.q_len
    if mask.kv_len != n_content:
        raise ValueError(f"plan_packed_pass: the mask's keys ({mask.kv_len}) must be the "
                         f"{n_content} content rows")
    live = mask.valid_rows()
    live[:, :n_content] |= mask.valid_keys()
    live_flat = live.reshape(-1).nonzero().squeeze(1)
    pos = torch.full((B * R,), -1, dtype=torch.long, device=live.device)
    pos[live_flat] = torch.arange(live_flat.numel(), device=live.device)
    r = live_flat % R
    is_content = r < n_content
    kv_src = is_content.nonzero().squeeze(1)
    kv_flat = (torch.div(live_flat, R, rounding_mode="floor") * n_content + r)[kv_src]
    body = _layer_rows(live_flat, B, R, None)
    last_rows = None
    if last is not None:
        out_rows, out_mask = last
        R_out = out_rows.shape[1]
        out_flat = out_mask.valid_rows().reshape(-1).nonzero().squeeze(1)
        b = torch.div(out_flat, R_out, rounding_mode="floor")
        take = pos[b * R + out_rows.reshape(-1)[out_flat]]
        if take.numel() and int(take.min()) < 0:
            raise ValueError("plan_packed_pass: an output row that out_mask calls real is a "
                             "padding row of mask (out_rows and the two descriptors disagree)")
        last_rows = _layer_rows(out_flat, B, R_out, take)
    return PackedPass(B=B, R=R, n_content=n_content, live_flat=live_flat, kv_src=kv_src,
                      kv_flat=kv_flat, body=body, last=last_rows)


def plan_for(rows, prune: bool) -> PackedPass:
    """The packed pass of ``rows`` (a layout.DecoderRows), planned once per layout: cached in
    ``rows.packing`` under ``prune`` (the last layer on the output rows only)."""
    plan = rows.packing.get(prune)
    if plan is None:
        plan = plan_packed_pass(rows.mask, rows.n_content,
                                (rows.out_rows, rows.out_mask) if prune else None)
        rows.packing[prune] = plan
    return plan
