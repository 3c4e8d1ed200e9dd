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

The role of each decoder row (:class:`DecoderRows`, built by ``ARLayout.decoder_rows``,
``NARLayout.decoder_rows`` and ``NARLayout.cmlm_rows``): content rows are the keys/values of
every layer; the *output rows* are the rows whose final states feed the output projection
(AR: the query rows; NAR/AUX: the M block and the query rows; CMLM: the M block). Nothing
else reads the last layer, so a pruned decoder computes only the output rows there. In the
NAR pass the last G row of each sample (ground truth of the last masked token) is *dead*:
only G row M-1 itself attends to it (spec §3.2: G row r sees G_k for k <= r, query r for
k < r), so no output row depends on it at any layer and the pruned pass leaves it out.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Optional

import torch

import janus_kernels as jk
from janus_kernels.masks import Field, MaskDescriptor

from .packing import SourceRows, plan_for, source_rows

__all__ = ["BOS", "PAD", "EOS", "UNK", "MASK", "DecoderRows", "ARLayout", "NARLayout",
           "JanusBatch", "build_batch", "positions_for"]

BOS, PAD, EOS, UNK = 0, 1, 2, 3
MASK = UNK  #: the decoder's MASK token is UNK, as in fairseq CMLM (spec §0)


@dataclasses.dataclass
class DecoderRows:
    """The rows of one decoder pass and what each row is for (spec §1).

    Rows are ``[content (n_content) ; query (the rest)]``. Content rows are the only keys and
    values of the self-attention (query rows never are), so every layer needs their states
    except the last one, whose outputs no later layer reads. The *output rows* are the rows
    whose final states feed the output projection: output row ``o`` of sample ``b`` is row
    ``out_rows[b, o]``; ``reads`` names the rows each loss reads, as flat indices into the
    ``B * R_out`` output rows. A pruned last layer computes only the output rows, with
    ``out_mask`` (what each output row sees: the same keys as its row in ``mask``; padding
    output rows see nothing) against keys from every content row of its input.
    """

    tokens: torch.Tensor           # (B, R) token ids
    positions: torch.Tensor        # (B, R) position ids
    n_content: int                 # rows [0, n_content) are the content (key/value) rows
    mask: MaskDescriptor           # R rows x n_content keys, every layer
    out_rows: torch.Tensor         # (B, R_out) long, rows in [0, R); padding: any row
    out_mask: MaskDescriptor       # R_out rows x n_content keys
    reads: Dict[str, torch.Tensor]  # loss name -> (n,) flat index into B * R_out
    # packed-pass plans of these rows (janus_model.packing), keyed by "last layer pruned":
    # the layout's own cache, so a batch reused across steps plans once
    packing: Dict[bool, object] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def num_rows(self) -> int:
        return self.tokens.shape[1]

    @property
    def num_out(self) -> int:
        return self.out_rows.shape[1]


def _with_fields(desc: MaskDescriptor, q_len: int, kv_len: int, q_split: int, family: str,
                 **fields: torch.Tensor) -> MaskDescriptor:
    """``desc`` with some per-sample fields replaced (by ``Field`` name) and new sizes: the
    same predicate on a subset of its rows / keys."""
    p = desc.params.clone()
    for name, value in fields.items():
        p[:, int(Field[name])] = value.to(p.dtype)
    return dataclasses.replace(desc, params=p, q_len=q_len, kv_len=kv_len, q_split=q_split,
                               family=family)


def _live_content(U: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """Per sample, the NAR content entries some output row depends on: V | M | G_0..G_{M-2}
    (all U + 2M but the dead last G row)."""
    return U + 2 * M - (M > 0).long()


def _cols(B: int, n: int, device) -> torch.Tensor:
    return torch.arange(n, device=device)[None, :].expand(B, n)


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
    _packing: Dict[tuple, dict] = dataclasses.field(default_factory=dict, repr=False,
                                                    compare=False)

    @property
    def seq_len(self) -> int:
        return self.content.shape[1]

    def rows(self, stride: Optional[int] = None) -> torch.Tensor:
        """Flat row index into a (B*stride) row tensor (default stride T)."""
        return self.row_sample * (self.seq_len if stride is None else stride) + self.row_col

    def mask(self) -> MaskDescriptor:
        """The fused two-stream descriptor: rows [content T ; query T], keys = content."""
        return jk.janus_ar_mask(self.lengths, self.seq_len)

    def decoder_rows(self) -> DecoderRows:
        """Rows [content T ; query T]; the output rows are the T query rows (the content
        stream's final states are never projected, spec §1.1), causal over the content."""
        T, B = self.seq_len, self.content.shape[0]
        return DecoderRows(
            tokens=torch.cat([self.content, self.query], 1),
            positions=torch.cat([self.positions, self.positions], 1),
            n_content=T, mask=self.mask(),
            out_rows=T + _cols(B, T, self.content.device),
            out_mask=jk.causal_mask(self.lengths, T),
            reads={"ar": self.rows()}, packing=self._packing.setdefault(("ar",), {}))


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
    live_len: int                   # max_b (U_b + 2M_b - [M_b > 0]): without the dead G row
    _packing: Dict[tuple, dict] = dataclasses.field(default_factory=dict, repr=False,
                                                    compare=False)

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

    def _mblock_rows(self, n_rows: int) -> torch.Tensor:
        """(B, Lq) content row of each M-block entry, U_b + r (padding entries clamped to a
        valid row; they are padding output rows)."""
        r = _cols(self.U.shape[0], self.query_len, self.U.device)
        return (self.U[:, None] + r).clamp(max=max(n_rows - 1, 0))

    def decoder_rows(self, drop_dead: bool = True) -> DecoderRows:
        """Rows [content ; query Lq]; the output rows are ``[M block (Lq) ; query rows (Lq)]``
        (NAR reads the M block, AUX the queries, spec §1.2). ``drop_dead``: leave out the
        dead last G row of each sample (module docstring), so the content is
        ``V | M | G_0..G_{M-2}`` padded to ``live_len``; the other rows' masks do not change.
        """
        Lq, B = self.query_len, self.U.shape[0]
        Lc = self.live_len if drop_dead else self.content_len
        mask = self.mask()
        if drop_dead:
            live = _live_content(self.U, self.M)
            mask = _with_fields(mask, Lc + Lq, Lc, Lc, "janus_nar_live", KV_LEN=live,
                                ROWS0=live)
        # the M rows' window is [U, U+M) (hi = max(r + 1, U + M) = U + M for r < M): the
        # content stream's predicate restricted to its M rows is ROWS0 = M
        out_mask = _with_fields(mask, 2 * Lq, Lc, Lq, "janus_nar_out", ROWS0=self.M)
        k = self.row_sample * (2 * Lq) + self.aux_col
        return DecoderRows(
            tokens=torch.cat([self.content[:, :Lc], self.query], 1),
            positions=torch.cat([self.content_positions[:, :Lc], self.query_positions], 1),
            n_content=Lc, mask=mask,
            out_rows=torch.cat([self._mblock_rows(Lc), Lc + _cols(B, Lq, self.U.device)], 1),
            out_mask=out_mask, reads={"nar": k, "aux": k + Lq},
            packing=self._packing.setdefault(("nar", drop_dead), {}))

    def cmlm_rows(self) -> DecoderRows:
        """CMLM rows: the V|M content only (no query stream, no G block); the output rows
        are the M block."""
        n, Lq = self.cmlm_len, self.query_len
        vm = self.U + self.M
        return DecoderRows(
            tokens=self.content[:, :n], positions=self.content_positions[:, :n],
            n_content=n, mask=self.cmlm_mask(), out_rows=self._mblock_rows(n),
            out_mask=jk.key_padding_mask(vm, Lq, n, q_lengths=self.M),
            reads={"nar": self.row_sample * Lq + self.aux_col},
            packing=self._packing.setdefault(("cmlm",), {}))


@dataclasses.dataclass
class JanusBatch:
    """Everything the decoder and the losses need for one target batch."""

    ar: ARLayout
    nar: NARLayout
    target_lengths: torch.Tensor    # (B,) L_b = N_b + 2 (the length head's target)
    source: Optional[SourceRows] = None   # the encoder's plan (plan_packing(src=...))

    def plan_packing(self, prune: bool = True,
                     src: Optional[torch.Tensor] = None) -> "JanusBatch":
        """Plan the packed passes (``ExecOptions.pack``) of every mode now, and with ``src``
        (the right-padded (B, S) source this batch goes with) the packed encoder too. A
        forward plans them on first use anyway, except inside torch.compile, where a live-row
        count would be data-dependent: call this before a compiled forward and it runs packed
        too. A forward with another source than the planned one raises."""
        for rows in (self.ar.decoder_rows(), self.nar.decoder_rows(drop_dead=prune),
                     self.nar.cmlm_rows()):
            plan_for(rows, prune)
        if src is not None:
            if not isinstance(src, torch.Tensor) or src.dim() != 2 or \
                    src.shape[0] != self.target_lengths.shape[0]:
                raise ValueError(f"src: expected the batch's (B={self.target_lengths.shape[0]},"
                                 f" S) source token ids, got {getattr(src, 'shape', src)}")
            self.source = source_rows((src != PAD).sum(1), src.shape[1])
        return self


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
    live = _live_content(U, M)
    stats = torch.stack([(L + M).max(), M.max(), M.sum(), L.max(), T_b.sum(), (U + M).max(),
                         live.max(), bad_masked, bad_frame, bad_pad]).tolist()
    Lc, Lq, R, Lmax, R_ar, Lcm, Llive, n_bad_masked, n_bad_frame, n_bad_pad = stats
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
        cmlm_len=Lcm, live_len=Llive)
    return JanusBatch(ar, nar, L)
