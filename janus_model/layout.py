"""Decoder input construction for JANUS (spec §1): a padded target batch plus a masked-position
set -> the AR two-stream layout and the reordered NAR/AUX two-stream layout.

Input: ``target`` (B, L_max) long, each row ``[BOS y1..yN EOS PAD...]`` (BOS=0, PAD=1, EOS=2,
right-padded) and ``masked`` (B, L_max) bool, True at the masked indices S ⊆ {1..N}.
With L = N+2, M = |S| and U = L - M per sample:

AR layout (spec §1.1), T = max_b(N_b + 1) columns::

    content  = [BOS, y1..yN]           position id = index + 2  (pad: PAD, id 1)
    query    = [UNK] * (N+1)            same position ids as the content
    target   = [y1..yN, EOS]            query row i predicts index i+1

NAR/AUX layout (spec §1.2), content padded to Lc = max_b(U+2M), query to Lq = max_b M::

    content  = V (the U unmasked entries, ascending) | M (M x UNK) | G (the M masked tokens)
    index    = original index of every entry (M and G repeat the masked indices); pad = 1
    position = index + 2 (pad: 1, the zero padding embedding)
    real     = True on V and G, False on M (and on padding)
    query    = M x UNK at the masked indices; target = the masked tokens, ascending

Row maps (flat, batch-major, one entry per masked token in ascending index order, so the
NAR, AUX and KL-AR rows line up one-to-one, spec §6.1): for masked index k of sample b with
rank r among the sample's masked indices,

    row_sample = b, aux_col = r, nar_col = U_b + r (the M block), ar_col = k - 1

Everything is vectorised over the batch (scatter with a dump column instead of per-sample
loops). The padded sizes need exactly one host read per batch (a single ``tolist()`` of a few
maxima/sums, which also carries the input checks); there are no other syncs.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch

import janus_kernels as jk
from janus_kernels.masks import MaskDescriptor

__all__ = ["BOS", "PAD", "EOS", "UNK", "MASK", "ARLayout", "NARLayout", "JanusBatch",
           "build_batch", "positions_for"]

BOS, PAD, EOS, UNK = 0, 1, 2, 3
MASK = UNK  #: the decoder's MASK token is UNK, as in fairseq CMLM (spec §0)


@dataclasses.dataclass
class ARLayout:
    """AR two-stream input (spec §1.1). All (B, T) except ``lengths`` (B,) and the flat
    row lists (R_ar,) over the B*T query rows (non-pad rows, batch-major)."""

    content: torch.Tensor
    query: torch.Tensor
    positions: torch.Tensor
    target: torch.Tensor
    lengths: torch.Tensor          # T_b = N_b + 1
    row_sample: torch.Tensor       # (R_ar,) sample of each real AR row
    row_col: torch.Tensor          # (R_ar,) column (= query index) of each real AR row
    row_target: torch.Tensor       # (R_ar,) its target token

    @property
    def seq_len(self) -> int:
        return self.content.shape[1]

    def rows(self, stride: Optional[int] = None) -> torch.Tensor:
        """Flat row index into a (B*stride) row tensor (default stride T)."""
        return self.row_sample * (self.seq_len if stride is None else stride) + self.row_col

    def mask(self) -> MaskDescriptor:
        """The fused two-stream descriptor: rows [content T ; query T], keys = content."""
        return jk.janus_ar_mask(self.lengths, self.seq_len)


@dataclasses.dataclass
class NARLayout:
    """Reordered NAR/AUX two-stream input (spec §1.2). Content tensors are (B, Lc), query
    tensors (B, Lq); ``U``, ``M`` are (B,); the row maps are (R,) with R = sum_b M_b."""

    content: torch.Tensor
    content_index: torch.Tensor
    content_positions: torch.Tensor
    content_real: torch.Tensor      # True on V and G entries
    query: torch.Tensor
    query_index: torch.Tensor
    query_positions: torch.Tensor
    target: torch.Tensor            # (B, Lq) masked tokens ascending, PAD-padded
    U: torch.Tensor
    M: torch.Tensor
    row_sample: torch.Tensor        # (R,) sample of each masked token
    aux_col: torch.Tensor           # (R,) its query row (rank r among the masked indices)
    nar_col: torch.Tensor           # (R,) its M-block content row U_b + r
    ar_col: torch.Tensor            # (R,) the AR row that predicts it (index k - 1)
    row_target: torch.Tensor        # (R,) the masked token y_k
    cmlm_len: int                   # max_b (U_b + M_b): content width without the G block

    @property
    def content_len(self) -> int:
        return self.content.shape[1]

    @property
    def query_len(self) -> int:
        return self.query.shape[1]

    @property
    def num_masked(self) -> int:
        return self.row_sample.shape[0]

    def mblock(self) -> torch.Tensor:
        """(B, Lc) bool: the M-block content rows, whose outputs give P_NAR."""
        j = torch.arange(self.content_len, device=self.U.device)[None, :]
        return (j >= self.U[:, None]) & (j < (self.U + self.M)[:, None])

    def mask(self) -> MaskDescriptor:
        """The fused JANUS descriptor: rows [content Lc ; query Lq], keys = content."""
        return jk.janus_nar_mask(self.U, self.M, self.content_len, self.query_len)

    def cmlm_mask(self) -> MaskDescriptor:
        """CMLM (V|M rows only, bidirectional over the sample's U+M entries)."""
        n = self.U + self.M
        return jk.key_padding_mask(n, self.cmlm_len, self.cmlm_len, q_lengths=n)


@dataclasses.dataclass
class JanusBatch:
    """Everything the decoder and the losses need for one target batch."""

    ar: ARLayout
    nar: NARLayout
    target_lengths: torch.Tensor    # (B,) L_b = N_b + 2 (the length head's target)


def positions_for(tokens: torch.Tensor, pad: int = PAD) -> torch.Tensor:
    """Standard learned-position ids for a right-padded batch: index + 2, pad -> 1."""
    idx = torch.arange(tokens.shape[1], device=tokens.device)[None, :] + 2
    return torch.where(tokens != pad, idx, torch.ones_like(idx))


def _check_inputs(target: torch.Tensor, masked: torch.Tensor) -> None:
    if not isinstance(target, torch.Tensor) or target.dim() != 2 or \
            target.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"target: expected an integer tensor (B, L_max), got "
                         f"{getattr(target, 'dtype', type(target))} "
                         f"{tuple(getattr(target, 'shape', ()))}")
    if not isinstance(masked, torch.Tensor) or masked.dtype != torch.bool or \
            masked.shape != target.shape:
        raise ValueError(f"masked: expected a bool tensor of shape {tuple(target.shape)}, got "
                         f"{getattr(masked, 'dtype', type(masked))} "
                         f"{tuple(getattr(masked, 'shape', ()))}")
    if masked.device != target.device:
        raise ValueError(f"masked: on {masked.device}, target on {target.device}")
    if target.shape[1] < 2:
        raise ValueError(f"target: rows need at least [BOS, EOS], got width {target.shape[1]}")


def _scatter_rows(n_rows: int, dest: torch.Tensor, keep: torch.Tensor, value: torch.Tensor,
                  fill: int) -> torch.Tensor:
    """out (B, n_rows) filled with ``fill``; out[b, dest[b, k]] = value[b, k] where keep.
    Entries not kept go to a dump column that is sliced off (no per-sample loop)."""
    B = dest.shape[0]
    out = torch.full((B, n_rows + 1), fill, dtype=value.dtype, device=dest.device)
    d = torch.where(keep, dest, torch.full_like(dest, n_rows))
    out.scatter_(1, d, value)
    return out[:, :n_rows]


def _scatter_flat(n: int, dest: torch.Tensor, keep: torch.Tensor,
                  value: torch.Tensor) -> torch.Tensor:
    """out (n,) with out[dest[b, k]] = value[b, k] where keep (dest unique among kept)."""
    out = torch.zeros(n + 1, dtype=value.dtype, device=dest.device)
    d = torch.where(keep, dest, torch.full_like(dest, n))
    out.scatter_(0, d.flatten(), value.flatten())
    return out[:n]


def build_batch(target: torch.Tensor, masked: torch.Tensor) -> JanusBatch:
    """Build the AR and NAR/AUX layouts for one batch (see the module docstring)."""
    _check_inputs(target, masked)
    target = target.long()
    B, W = target.shape
    dev = target.device
    k = torch.arange(W, device=dev)[None, :].expand(B, W)
    real = target != PAD
    L = real.sum(1)
    msk = masked & real
    vis = real & ~msk
    M = msk.sum(1)
    U = L - M
    T_b = L - 1

    # --- the single host read: padded sizes, flat row counts, and the input checks
    bad_masked = (masked & ((k == 0) | (k >= (L - 1)[:, None]))).sum()
    bad_frame = ((target[:, 0] != BOS) | (L < 2) |
                 (target.gather(1, (L - 1).clamp(min=0)[:, None])[:, 0] != EOS)).sum()
    bad_pad = (real & (k >= L[:, None])).sum()   # a PAD before the end of a row
    stats = torch.stack([(L + M).max(), M.max(), M.sum(), L.max(), T_b.sum(), (U + M).max(),
                         bad_masked, bad_frame, bad_pad]).tolist()
    Lc, Lq, R, Lmax, R_ar, Lcm, n_bad_masked, n_bad_frame, n_bad_pad = stats
    if n_bad_frame or n_bad_pad:
        raise ValueError("target: every row must be [BOS(0), y1..yN, EOS(2), PAD(1)...] "
                         "(right-padded, N >= 0)")
    if n_bad_masked:
        raise ValueError("masked: BOS, EOS and padding positions can not be masked "
                         "(S must be a subset of 1..N)")
    T = Lmax - 1

    # --- AR layout (spec §1.1)
    kt = k[:, :T]
    ar_real = kt < T_b[:, None]
    ar_content = torch.where(ar_real, target[:, :T], PAD)
    ar_query = torch.where(ar_real, UNK, PAD)
    ar_pos = torch.where(ar_real, kt + 2, 1)
    ar_target = target[:, 1:T + 1]
    ar_off = (T_b.cumsum(0) - T_b)[:, None]
    ar_dest = ar_off + kt
    bidx = torch.arange(B, device=dev)[:, None].expand(B, W)
    ar = ARLayout(ar_content, ar_query, ar_pos, ar_target, T_b,
                  _scatter_flat(R_ar, ar_dest, ar_real, bidx[:, :T]),
                  _scatter_flat(R_ar, ar_dest, ar_real, kt),
                  _scatter_flat(R_ar, ar_dest, ar_real, ar_target))

    # --- NAR/AUX layout (spec §1.2): destination column of each original index per block
    rank_v = vis.long().cumsum(1) - 1
    rank_m = msk.long().cumsum(1) - 1
    dest_v = rank_v
    dest_m = U[:, None] + rank_m
    dest_g = dest_m + M[:, None]
    dest = torch.cat([dest_v, dest_m, dest_g], 1)
    keep = torch.cat([vis, msk, msk], 1)
    unk = torch.full_like(target, UNK)
    tok = torch.cat([target, unk, target], 1)
    idx3 = torch.cat([k, k, k], 1)
    is_real = torch.cat([vis, torch.zeros_like(msk), msk], 1)
    content = _scatter_rows(Lc, dest, keep, tok, PAD)
    content_index = _scatter_rows(Lc, dest, keep, idx3, 1)
    content_pos = _scatter_rows(Lc, dest, keep, idx3 + 2, 1)
    content_real = _scatter_rows(Lc, dest, keep, is_real, False)

    query = _scatter_rows(Lq, rank_m, msk, unk, PAD)
    query_index = _scatter_rows(Lq, rank_m, msk, k, 1)
    query_pos = _scatter_rows(Lq, rank_m, msk, k + 2, 1)
    nar_target = _scatter_rows(Lq, rank_m, msk, target, PAD)

    # flat rows: batch-major, ascending masked index == offset_b + rank
    flat = (M.cumsum(0) - M)[:, None] + rank_m
    nar = NARLayout(
        content, content_index, content_pos, content_real, query, query_index, query_pos,
        nar_target, U, M,
        row_sample=_scatter_flat(R, flat, msk, bidx),
        aux_col=_scatter_flat(R, flat, msk, rank_m),
        nar_col=_scatter_flat(R, flat, msk, dest_m),
        ar_col=_scatter_flat(R, flat, msk, k - 1),
        row_target=_scatter_flat(R, flat, msk, target),
        cmlm_len=Lcm)
    return JanusBatch(ar, nar, L)
