"""`fused_linear_janus_loss`: the whole JANUS criterion from hidden states and a tied (V, D)
projection, chunk by chunk, never materializing the (rows x V) logits (Liger's fused-linear
idea, on the JANUS row kernels of janus_kernels/losses.py). Gradients are computed in the
forward and scaled by the upstream gradient in the backward.

Two chunkings. When each masked row's AR row (the KL row index) is nondecreasing -- the
model's batch-major layout, and any bool AR-row mask -- a chunk is a range of AR rows together
with the masked rows whose KL rows fall in it, so one GEMM gives every logit row the chunk's
terms read and each row is projected once (the aligned pass). Otherwise the AR rows go in one
pass and the masked rows in a second, which projects the AR rows of the KL terms again (one
extra (M x D) @ (D x V) product and its two gradient products)."""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch

from ._chunking import fused_loss_chunk_rows
from .losses import (LOSS_TERMS, JanusLossWeights, _FLOAT_DTYPES, _acc, _be,
                     _check_janus_shapes, _has_janus_rows, _kl_row_index, _length_term,
                     _pick_backend)

__all__ = ["fused_linear_janus_loss", "fused_linear_cross_entropy"]


# ======================================================== fused linear JANUS loss
def _fused_linear_janus_impl(h_ar, h_nar, h_aux, weight, ar_targets, masked_targets, idx,
                             w6, eps, ignore_index, chunk_rows, need_grad, backend):
    """The whole criterion from hidden states, chunk by chunk: logits = h @ weight.T for at
    most `chunk_rows` rows per input at a time, the loss rows and their logit gradients by the
    row kernels, then grad_h = dlogits @ weight and grad_weight += dlogits.T @ h. Gradients
    are computed here, in the forward (Liger's fused-linear idea): no (rows x V) tensor
    outlives a chunk. The aligned pass when the KL rows allow it, else two passes (module
    docstring)."""
    dev, dt = h_ar.device, h_ar.dtype
    N, M = h_ar.shape[0], h_nar.shape[0]
    be = _be(backend)
    if _has_janus_rows(backend, dev, dt):
        spans = _aligned_spans(idx, N, M, chunk_rows)
        if spans is not None:
            return _aligned_pass(h_ar, h_nar, h_aux, weight, ar_targets, masked_targets, idx,
                                 w6, eps, ignore_index, spans, need_grad, be)
    ct = _acc(dt)
    w_ar = w6[0]
    n_ar, n_m, valid = _row_counts(ar_targets, masked_targets, ignore_index, ct)
    sums = torch.zeros(6, dtype=ct, device=dev)
    gh_ar = torch.zeros(h_ar.shape, dtype=ct, device=dev) if need_grad else None
    gh_nar = torch.empty(h_nar.shape, dtype=dt, device=dev) if need_grad else None
    gh_aux = torch.empty(h_aux.shape, dtype=dt, device=dev) if need_grad else None
    gw = torch.zeros(weight.shape, dtype=ct, device=dev) if need_grad else None

    # AR cross entropy over all AR rows.
    # Ignored rows are never read (the documented rule): their hidden states are replaced by
    # zeros before any GEMM, or a NaN there would reach grad_weight through 0 * NaN.
    zero = torch.zeros((), dtype=dt, device=dev)
    ar_valid = (ar_targets != ignore_index)[:, None]
    for s in range(0, N, chunk_rows):
        e = min(N, s + chunk_rows)
        h, t = torch.where(ar_valid[s:e], h_ar[s:e], zero), ar_targets[s:e]
        logits = torch.mm(h, weight.t())
        loss, st = be.ce_fwd(logits, t, eps, ignore_index)
        sums[0] += loss.sum()
        if need_grad and w_ar != 0:
            g = (w_ar / n_ar).expand(e - s).contiguous()
            dlog = be.ce_bwd(g, logits, t, st, eps, ignore_index)
            if dlog.dtype == ct:
                gh_ar[s:e].addmm_(dlog, weight)
            else:
                gh_ar[s:e] += torch.mm(dlog, weight).to(ct)
            _add_weight_grad(gw, dlog, h)
    # Masked rows: NAR / AUX cross entropy and the three symmetric KLs, with the AR rows'
    # logits recomputed for their KL rows (one extra (c x D) @ (D x V) product per chunk).
    masked_rows = _masked_rows_fused if _has_janus_rows(backend, dev, dt) else _masked_rows_composed
    g5 = torch.tensor(w6[1:], dtype=ct, device=dev) / n_m  # per-term upstream gradients
    for s in range(0, M, chunk_rows):
        e = min(M, s + chunk_rows)
        c = e - s
        hs = torch.cat([h_ar.index_select(0, idx[s:e]), h_nar[s:e], h_aux[s:e]])
        hs = torch.where(valid[s:e].repeat(3)[:, None], hs, zero)   # ignored rows: zeros
        logits = torch.mm(hs, weight.t())  # one GEMM for the three streams
        t, vm = masked_targets[s:e], valid[s:e]
        loss5, grads = masked_rows(logits[:c], logits[c:2 * c], logits[2 * c:], t, vm, g5,
                                   w6[1:], eps, ignore_index, need_grad, backend)
        sums[1:] += loss5
        if not need_grad:
            continue
        for dlog, h, part in zip(grads, (hs[:c], hs[c:2 * c], hs[2 * c:]), range(3)):
            gh = torch.mm(dlog, weight)
            if part == 0:
                gh_ar.index_add_(0, idx[s:e], gh.to(ct))
            else:
                (gh_nar if part == 1 else gh_aux)[s:e] = gh
            _add_weight_grad(gw, dlog, h)
    grads = (gh_ar.to(dt), gh_nar, gh_aux, gw) if need_grad else None
    return _results(sums, n_ar, n_m, w6, grads, h_ar, weight)


def _row_counts(ar_targets, masked_targets, ignore_index, ct):
    """(AR rows counted, masked rows counted, the masked rows' validity): the CE / KL means'
    denominators (at least 1: an empty term is 0)."""
    valid = masked_targets != ignore_index
    n_ar = (ar_targets != ignore_index).sum().clamp(min=1).to(ct)
    return n_ar, valid.sum().clamp(min=1).to(ct), valid


def _add_weight_grad(gw, dlog, h):
    """gw += dlog.T @ h, in place when the dtypes allow (gw is the accumulation dtype)."""
    if dlog.dtype == gw.dtype:
        gw.addmm_(dlog.t(), h)
    else:
        gw.add_(torch.mm(dlog.t(), h).to(gw.dtype))


def _results(sums, n_ar, n_m, w6, grads, h_ar, weight):
    """The op's outputs from the six loss sums: (total, terms, grad_ar, grad_nar, grad_aux,
    grad_weight), placeholders for the gradients when none were computed."""
    terms = sums / torch.stack([n_ar, n_m, n_m, n_m, n_m, n_m])
    total = (terms * torch.tensor(w6, dtype=sums.dtype, device=sums.device)).sum()
    if grads is None:  # four distinct placeholders: custom-op outputs may not alias
        return (total, terms) + tuple(h_ar.new_zeros(()) for _ in range(4))
    *gh, gw = grads
    return (total, terms, *gh, gw.to(weight.dtype))


def _aligned_spans(idx: torch.Tensor, N: int, M: int, chunk_rows: int):
    """Chunks (s, e, ms, me) of the aligned pass: AR rows [s, e) and the masked rows [ms, me)
    whose KL rows lie in them, about 3 x chunk_rows rows each (the budget of the two-pass
    chunking); None where the KL row index is not nondecreasing or lives on a device (a
    host read of it would be a sync)."""
    if idx.device.type != "cpu" or torch.compiler.is_compiling():
        return None
    if M > 1 and not bool((idx[1:] >= idx[:-1]).all()):
        return None
    ar_rows = max(1, int(3 * chunk_rows * N / max(N + 2 * M, 1)))
    starts = list(range(0, N, ar_rows))
    ms = torch.searchsorted(idx, torch.tensor(starts, dtype=idx.dtype)).tolist() + [M]
    return [(s, min(N, s + ar_rows), ms[i], ms[i + 1]) for i, s in enumerate(starts)]


def _aligned_pass(h_ar, h_nar, h_aux, weight, ar_targets, masked_targets, idx, w6, eps,
                  ignore_index, spans, need_grad, be):
    """The criterion over aligned chunks (module docstring): per chunk one GEMM for the AR,
    NAR and AUX rows, the fused row kernels for all six terms, then each stream's hidden
    gradient (written once: every row belongs to one chunk) and the weight gradient."""
    dev, dt = h_ar.device, h_ar.dtype
    ct = _acc(dt)
    n_ar, n_m, valid = _row_counts(ar_targets, masked_targets, ignore_index, ct)
    # an AR row is read by its CE or by the KL terms of a valid masked row; rows nobody reads
    # are replaced by zeros before the GEMM (a NaN there would reach grad_weight as 0 * NaN)
    ar_read = ar_targets != ignore_index
    ar_read[idx[valid]] = True
    zero = torch.zeros((), dtype=dt, device=dev)
    g_ar_row = (w6[0] / n_ar).reshape(1)
    g5 = torch.tensor(w6[1:], dtype=ct, device=dev) / n_m
    sums = torch.zeros(6, dtype=ct, device=dev)
    grads = [torch.empty(t.shape, dtype=dt, device=dev) for t in (h_ar, h_nar, h_aux)] \
        if need_grad else None
    gw = torch.zeros(weight.shape, dtype=ct, device=dev) if need_grad else None
    for s, e, ms, me in spans:
        ca, cm = e - s, me - ms
        h = torch.cat([h_ar[s:e], h_nar[ms:me], h_aux[ms:me]])
        keep = torch.cat([ar_read[s:e], valid[ms:me], valid[ms:me]])
        h = torch.where(keep[:, None], h, zero)
        logits = torch.mm(h, weight.t())
        parts = (logits[:ca], logits[ca:ca + cm], logits[ca + cm:])
        ar_t, m_t, lidx = ar_targets[s:e], masked_targets[ms:me], idx[ms:me] - s
        ar_loss, m_loss, ar_st, m_st = be.janus_fwd(*parts, ar_t, m_t, lidx, eps, ignore_index)
        sums[0] += ar_loss.sum()
        sums[1:] += m_loss.sum(0)
        if not need_grad:
            continue
        g_m = (g5 * valid[ms:me, None]).contiguous()
        dlogs = be.janus_bwd(g_ar_row.expand(ca).contiguous(), g_m, *parts, ar_t, m_t, lidx,
                             ar_st, m_st, eps, ignore_index)
        # one product each for the hidden and the weight gradient (rows in h's order): the
        # weight (V x D) is read, and its gradient read and written, once per chunk rather
        # than once per stream, which at a large vocabulary is most of the memory traffic
        dlog = torch.cat(dlogs) if cm else dlogs[0]
        gh = torch.mm(dlog, weight)
        grads[0][s:e] = gh[:ca]
        if cm:
            grads[1][ms:me] = gh[ca:ca + cm]
            grads[2][ms:me] = gh[ca + cm:]
        _add_weight_grad(gw, dlog, h)
    return _results(sums, n_ar, n_m, w6, grads + [gw] if need_grad else None, h_ar, weight)


def _masked_rows_fused(la, ln, lx, t, valid, g5, w5, eps, ignore_index, need_grad, backend):
    """Loss sums of [CE(n), CE(x), KLs(a,n), KLs(a,x), KLs(n,x)] over c aligned masked rows
    and (with need_grad) the three logit gradients for the per-term upstream gradients g5
    (a tensor; w5 are the python weights), by the backend's fused rows op (each logit row
    read once per pass; a zero g5 entry drops its term)."""
    be = _be(backend)
    c = la.shape[0]
    no_ar = torch.full((c,), ignore_index, dtype=torch.int64, device=la.device)
    own = torch.arange(c, device=la.device)
    ar_loss, m_loss, ar_st, m_st = be.janus_fwd(la, ln, lx, no_ar, t, own, eps, ignore_index)
    if not need_grad:
        return m_loss.sum(0), None
    g_m = (g5.to(m_loss.dtype) * valid.unsqueeze(1)).contiguous()
    grads = be.janus_bwd(torch.zeros_like(ar_loss), g_m, la, ln, lx, no_ar, t, own, ar_st,
                         m_st, eps, ignore_index)
    return m_loss.sum(0), grads


def _masked_rows_composed(la, ln, lx, t, valid, g5, w5, eps, ignore_index, need_grad, backend):
    """As _masked_rows_fused, from the separate row kernels of any backend."""
    be = _be(backend)
    c = la.shape[0]
    l_n, st_n = be.ce_fwd(ln, t, eps, ignore_index)
    l_x, st_x = be.ce_fwd(lx, t, eps, ignore_index)
    k_an, st_an = be.kl_fwd(la, ln, valid, 1.0)
    k_ax, st_ax = be.kl_fwd(la, lx, valid, 1.0)
    k_nx, st_nx = be.kl_fwd(ln, lx, valid, 1.0)
    loss5 = torch.stack([l_n.sum(), l_x.sum(), k_an.sum(), k_ax.sum(), k_nx.sum()])
    if not need_grad:
        return loss5, None
    da, dn, dx = (torch.zeros_like(la) for _ in range(3))
    row = lambda j: g5[j].expand(c).contiguous()  # noqa: E731
    if w5[0] != 0:
        dn.add_(be.ce_bwd(row(0), ln, t, st_n, eps, ignore_index))
    if w5[1] != 0:
        dx.add_(be.ce_bwd(row(1), lx, t, st_x, eps, ignore_index))
    for j, (l1, l2, st1, d1, d2) in ((2, (la, ln, st_an, da, dn)), (3, (la, lx, st_ax, da, dx)),
                                     (4, (ln, lx, st_nx, dn, dx))):
        if w5[j] != 0:
            g1, g2 = be.kl_bwd(row(j), l1, l2, st1, valid, 1.0)
            d1.add_(g1)
            d2.add_(g2)
    return loss5, (da, dn, dx)


@torch.library.custom_op("janus::fused_linear_janus", mutates_args=())
def _fused_linear_janus_op(h_ar: torch.Tensor, h_nar: torch.Tensor, h_aux: torch.Tensor,
                           weight: torch.Tensor, ar_targets: torch.Tensor,
                           masked_targets: torch.Tensor, kl_rows: torch.Tensor,
                           weights: Sequence[float], label_smoothing: float, ignore_index: int,
                           chunk_rows: int, need_grad: bool, backend: str
                           ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                      torch.Tensor, torch.Tensor]:
    return _fused_linear_janus_impl(h_ar, h_nar, h_aux, weight, ar_targets, masked_targets,
                                    kl_rows, tuple(weights), label_smoothing, ignore_index,
                                    chunk_rows, need_grad, backend)


@_fused_linear_janus_op.register_fake
def _(h_ar, h_nar, h_aux, weight, ar_targets, masked_targets, kl_rows, weights,
      label_smoothing, ignore_index, chunk_rows, need_grad, backend):
    ct = _acc(h_ar.dtype)
    total, terms = h_ar.new_empty((), dtype=ct), h_ar.new_empty((6,), dtype=ct)
    if not need_grad:
        return (total, terms) + tuple(h_ar.new_empty(()) for _ in range(4))
    return (total, terms, h_ar.new_empty(h_ar.shape), h_nar.new_empty(h_nar.shape),
            h_aux.new_empty(h_aux.shape), weight.new_empty(weight.shape))


def _fl_setup(ctx, inputs, output):
    _, terms, g_ar, g_nar, g_aux, g_w = output
    ctx.save_for_backward(g_ar, g_nar, g_aux, g_w)
    ctx.mark_non_differentiable(terms, g_ar, g_nar, g_aux, g_w)


def _fl_backward(ctx, g_total, *unused):
    g_ar, g_nar, g_aux, g_w = ctx.saved_tensors
    g = g_total.to(g_ar.dtype)  # a 0-d tensor: no host sync, no `g == 1` shortcut
    return (g_ar * g, g_nar * g, g_aux * g, g_w * g.to(g_w.dtype),
            None, None, None, None, None, None, None, None, None)


_fused_linear_janus_op.register_autograd(_fl_backward, setup_context=_fl_setup)


def fused_linear_janus_loss(hidden_ar: torch.Tensor, hidden_nar: torch.Tensor,
                            hidden_aux: torch.Tensor, weight: torch.Tensor,
                            ar_targets: torch.Tensor, masked_targets: torch.Tensor,
                            ar_kl_rows: torch.Tensor, *,
                            weights: JanusLossWeights = JanusLossWeights(),
                            label_smoothing: float = 0.1, ignore_index: int = -100,
                            chunk_rows: Optional[int] = None,
                            length_logits: Optional[torch.Tensor] = None,
                            length_targets: Optional[torch.Tensor] = None,
                            backend: Optional[str] = None
                            ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """:func:`janus_loss` with the output projection fused in: logits = hidden @ weight.T
    (a tied (V, D) embedding / LM head, no bias) are computed ``chunk_rows`` rows at a time
    and dropped after their loss and gradients are taken, so no (rows x V) logits exist
    beyond one chunk (3 x chunk_rows x V for the masked streams).

    Gradients for the hidden states and the weight are computed in the forward pass (when
    any input requires grad and grad mode is on) and kept until backward, which only scales
    them by the upstream gradient (a 0-d tensor multiply, no host sync). Only ``total`` is
    differentiable; the returned terms are detached values. The AR rows used by the KL terms
    have their logits recomputed in the masked-row pass (an extra (M x D x V) GEMM).

    Args: as :func:`janus_loss`, with hidden_ar (N_ar, D), hidden_nar/hidden_aux (M, D),
    weight (V, D); chunk_rows defaults to a per-device choice (janus_kernels/_chunking.py:
    a cache-sized chunk on CPU, a few large chunks on a GPU instead of ~100 small ones).
    """
    who = "fused_linear_janus_loss"
    for name, t in (("hidden_ar", hidden_ar), ("hidden_nar", hidden_nar),
                    ("hidden_aux", hidden_aux), ("weight", weight)):
        if not isinstance(t, torch.Tensor) or t.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"{who}: {name} must be a float tensor")
        if t.dtype != hidden_ar.dtype or t.device != hidden_ar.device:
            raise TypeError(f"{who}: {name} must match hidden_ar's dtype and device "
                            f"({hidden_ar.dtype}, {hidden_ar.device}), got {t.dtype}, {t.device}")
    _check_janus_shapes(who, hidden_ar, hidden_nar, hidden_aux, ar_targets, masked_targets)
    if weight.dim() != 2 or weight.shape[1] != hidden_ar.shape[1] or weight.shape[0] == 0:
        raise ValueError(f"{who}: weight must be (V, {hidden_ar.shape[1]}), got "
                         f"{tuple(weight.shape)}")
    dev, M, V = hidden_ar.device, hidden_nar.shape[0], weight.shape[0]
    idx = _kl_row_index(ar_kl_rows, hidden_ar.shape[0], M, dev, who)
    if chunk_rows is None:
        chunk_rows = fused_loss_chunk_rows(V, weight.shape[1], hidden_ar.dtype, dev)
    if int(chunk_rows) < 1:
        raise ValueError(f"{who}: chunk_rows must be >= 1, got {chunk_rows}")
    backend = _pick_backend(backend, "cross_entropy", hidden_ar, who)
    need_grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (hidden_ar, hidden_nar, hidden_aux, weight))
    tgt = lambda t: t.to(device=dev, dtype=torch.int64).contiguous()  # noqa: E731
    total, terms_t, *_ = _fused_linear_janus_op(
        hidden_ar, hidden_nar, hidden_aux, weight, tgt(ar_targets), tgt(masked_targets), idx,
        [float(w) for w in weights.as_tuple()], float(label_smoothing), int(ignore_index),
        int(chunk_rows), bool(need_grad), backend)
    terms = {k: terms_t[i] for i, k in enumerate(LOSS_TERMS)}
    length = _length_term(length_logits, length_targets)
    if length is not None:
        terms["length"] = length
        total = total + weights.length * length.to(total.dtype)
    return total, terms


def fused_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                               *, label_smoothing: float = 0.0, ignore_index: int = -100,
                               chunk_rows: Optional[int] = None,
                               backend: Optional[str] = None) -> torch.Tensor:
    """:func:`cross_entropy` (mean over non-ignored rows) of ``hidden @ weight.T`` with the
    projection fused in, as :func:`fused_linear_janus_loss` (of which it is the AR term
    alone, with no masked rows): no (rows x V) logits exist beyond one chunk.

    Args: hidden (N, D); weight (V, D), a tied embedding / LM head without bias; target (N,)
    int class indices (``ignore_index``: no loss, no gradient, the hidden row never read).
    Returns the float32 loss (float64 for float64 inputs)."""
    who = "fused_linear_cross_entropy"
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 2:
        raise ValueError(f"{who}: hidden must be a 2-D (rows, D) tensor")
    if not isinstance(target, torch.Tensor) or target.shape != hidden.shape[:1]:
        raise ValueError(f"{who}: target must be a ({hidden.shape[0]},) tensor of class "
                         f"indices, got {getattr(target, 'shape', type(target).__name__)}")
    none = hidden.new_empty((0, hidden.shape[1]))
    no_rows = target.new_empty((0,), dtype=torch.int64)
    total, _ = fused_linear_janus_loss(
        hidden, none, none, weight, target, no_rows, no_rows,
        weights=JanusLossWeights(1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
        label_smoothing=label_smoothing, ignore_index=ignore_index, chunk_rows=chunk_rows,
        backend=backend)
    return total
