"""Target span masking for JANUS NMT training (spec §5.1), vectorised over the batch.

Per sample, on the full item ``[BOS, y1..yN, EOS]`` of length L = N + 2:

1. budget n = ceil(ratio * L) (ratio 0.7; L counts BOS and EOS);
2. span lengths drawn i.i.d. from Poisson(λ) truncated where a probability first falls below
   1e-7 (that last entry included: {0..14} for λ=2) and renormalised; draw until the
   cumulative sum reaches n, cut there and shorten the last span so the total is n exactly;
   then keep only the first L spans of that list, zero-length ones included ("the number
   of spans is also capped at L", as the authors' dataset): when more than L draws were
   needed -- only likely for short targets, N <= 6 or so -- part of the budget is unspent;
3. zero-length spans mask nothing; the c nonzero spans get c distinct starts drawn uniformly
   from all L indices (c <= n <= L, so a start always exists);
4. a span that would run past the end (start + length > L) is reset to length 1;
5. mark every covered index (overlaps allowed), then force BOS and EOS unmasked.
   Like the authors' code, a target token that already is UNK (the MASK id) also counts as
   masked (``unk_is_masked``), since S is "the indices holding UNK".

The effective M/N is therefore well below 0.7 (about 0.55-0.66, spec table), and M = 0 is
possible for short targets.

Vectorisation: the draws are a (B, K) matrix (K columns suffice for every row with
overwhelming probability; rows whose draws fall short get more columns), starts are the
first c entries of a per-row random permutation (argsort of uniform keys with padding
pushed last), and coverage is a +1/-1 difference array with one cumsum.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .layout import PAD, UNK

__all__ = ["poisson_span_table", "span_mask"]


def poisson_span_table(lam: float = 2.0, cutoff: float = 1e-7) -> torch.Tensor:
    """Categorical probabilities over span lengths 0, 1, ...: Poisson(lam) pmf, stopped at
    (and including) the first entry below ``cutoff``, renormalised."""
    if lam <= 0:
        raise ValueError(f"lam: the Poisson rate must be positive, got {lam}")
    ps, p, k = [], math.exp(-lam), 0
    while True:
        ps.append(p)
        if p < cutoff or k >= 127:
            break
        k += 1
        p = p * lam / k
    t = torch.tensor(ps, dtype=torch.float64)
    return t / t.sum()


def _draw_spans(n: torch.Tensor, table: torch.Tensor, g: Optional[torch.Generator]
                ) -> torch.Tensor:
    """(B, K) span lengths whose row sums are exactly n (trailing zeros after the cut)."""
    B = n.shape[0]
    K = int(n.max()) + 16 if B else 1
    spans = torch.multinomial(table.float(), B * K, replacement=True,
                              generator=g).view(B, K)
    while bool((spans.sum(1) < n).any()):      # rare: some row drew too many short spans
        more = torch.multinomial(table.float(), B * K, replacement=True, generator=g)
        spans = torch.cat([spans, more.view(B, K)], 1)
    cum = spans.cumsum(1)
    cut = (cum < n[:, None]).sum(1, keepdim=True)       # first column where cum >= n
    col = torch.arange(spans.shape[1])[None, :]
    before = torch.where(col < cut, spans, 0).sum(1, keepdim=True)
    spans = torch.where(col < cut, spans, torch.where(col == cut, n[:, None] - before, 0))
    return spans


def span_mask(target: torch.Tensor, ratio: float = 0.7, lam: float = 2.0, *,
              generator: Optional[torch.Generator] = None,
              unk_is_masked: bool = True) -> torch.Tensor:
    """Masked-position set S for a right-padded target batch ``[BOS y.. EOS PAD..]``.

    Returns a (B, W) bool tensor, True at masked indices (never BOS, EOS or padding).
    Runs on CPU (the data path); ``target`` on another device is handled by a round trip.
    """
    if not isinstance(target, torch.Tensor) or target.dim() != 2 or \
            target.dtype.is_floating_point or target.dtype == torch.bool:
        raise ValueError(f"target: expected an integer tensor (B, W), got "
                         f"{getattr(target, 'dtype', type(target))}")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio: expected a masking budget in [0, 1], got {ratio}")
    dev = target.device
    tgt = target.detach().cpu().long()
    B, W = tgt.shape
    real = tgt != PAD
    L = real.sum(1)
    if B == 0 or W == 0:
        return torch.zeros(B, W, dtype=torch.bool, device=dev)
    n = torch.ceil(L.double() * ratio).long()           # float64 ceil, as Python's math.ceil
    spans = _draw_spans(n, poisson_span_table(lam), generator)
    # the number of spans (in draw order, zero-length ones included) is capped at L
    spans = torch.where(torch.arange(spans.shape[1])[None, :] < L[:, None], spans, 0)

    # nonzero spans first (stable, keeps the i.i.d. order); c = how many
    order = torch.sort((spans == 0).int(), dim=1, stable=True).indices
    spans = spans.gather(1, order)
    spans = torch.nn.functional.pad(spans, (0, max(W - spans.shape[1], 0)))[:, :W]
    c = (spans > 0).sum(1, keepdim=True)
    # distinct uniform starts: a random permutation of each row's real indices
    keys = torch.rand(B, W, generator=generator).masked_fill(~real, 2.0)
    starts = keys.argsort(1)
    col = torch.arange(W)[None, :]
    active = col < c
    length = torch.where(starts + spans > L[:, None], 1, spans)
    length = torch.where(active, length, 0)
    diff = torch.zeros(B, W + 1, dtype=torch.long)
    diff.scatter_add_(1, starts, active.long())
    diff.scatter_add_(1, (starts + length).clamp(max=W), -active.long())
    covered = diff.cumsum(1)[:, :W] > 0
    if unk_is_masked:
        covered |= tgt == UNK
    inner = real & (col > 0) & (col < (L - 1)[:, None])
    return (covered & inner).to(dev)
