"""`janus_kernels.losses`: fused bidirectional KL, the JANUS label-smoothed cross entropy, the
full JANUS NMT criterion, and a fused-linear variant that never materializes the logits.

Math (per row r, logits x, y of one row, temperature T)::

    p = softmax(x / T), q = softmax(y / T), d = (x - y) / T
    symmetric_kl_r = 1/2 [KL(p||q) + KL(q||p)] = 1/2 sum_v (p_v - q_v) d_v
    dL/dx = (g / 2T) [p (d - s_p + 1) - q],  dL/dy = (g / 2T) [q (1 + s_q - d) - p]
    with s_p = sum p d, s_q = sum q d and g the upstream gradient of the row's loss.

    cross_entropy_r = (1 - eps)(-log p_t) + eps * mean_v(-log p_v)      (p = softmax(x))
    dL/dx_v = g [p_v - eps/V - (1 - eps) [v == t]]

The smoothing is JANUS's (eps spread uniformly over the whole vocabulary, the target
included), which is exactly ``F.cross_entropy(label_smoothing=eps)`` for rows that are not
ignored. No temperature factor T^2 is applied to the KL (JANUS uses T = 1).

Design: each loss is a ``torch.library`` custom op pair (forward returns per-row losses plus
a few per-row statistics, backward recomputes the softmaxes from the logits), so inputs stay
read-only, nothing (rows x V)-sized is kept between forward and backward, reductions are
ordinary torch ops on the per-row vector (no host syncs; ``torch.compile(fullgraph=True)``
works), and any upstream gradient is folded into the backward's per-row scale for free.
Backends implement the raw functions of janus_kernels/backends (kl_fwd / kl_bwd, ce_fwd /
ce_bwd, janus_fwd / janus_bwd) and declare what they serve; dispatch follows from that:
``"cpu"``: the compiled kernels (csrc/cpu/loss.cpp, at the CPU's ISA level); ``"cuda"``:
csrc/cuda/loss.cu when the extension is built with CUDA (emulation-tested, not yet timed on a
GPU, so Triton stays the CUDA default); ``"triton"``: Triton kernels (CUDA, or CPU tensors
under TRITON_INTERPRET=1); ``"reference"``: eager PyTorch on log_softmax quantities, any
device. Stats are private to a backend.

Rules for special values (all backends):
  * ``row_mask`` False / ``ignore_index`` rows: loss 0, gradient 0, their logits are never
    read (padding may hold anything). Mean reductions divide by the number of selected rows;
    an empty selection gives 0, not NaN (``F.cross_entropy`` would give NaN).
  * KL, -inf logits: an entry that is -inf on both sides contributes 0 (0 log 0 = 0) and gets
    zero gradient. -inf on one side only makes the KL infinite: that row's loss is +inf and its
    gradients are NaN (the gradient of an infinite loss is undefined). Every selected row needs
    a finite logit on each side; NaN/+inf logits give NaN.
  * CE, -inf logits: with eps > 0, mean_v(-log p_v) is infinite, so the row's loss is +inf
    (its gradient, from the formula above, stays finite); with eps = 0, -inf logits off the
    target are fine. A target outside [0, V) raises on CPU (cpu, reference backends).
  * Losses are float32 (float64 for float64 logits) whatever the logits' dtype; gradients
    have the logits' dtype.

``janus_loss`` with the "cpu", "cuda" and "triton" backends does not compose
those ops: one fused row op (csrc/cpu/janus_loss.cpp, janus_kernels/triton/janus_loss.py)
reads each AR/NAR/AUX logit row once per pass, computes all six terms from 3 exps per
element triple, and writes each of the three logit gradients once (the composed path reads
rows up to three times and writes nine gradient tensors that autograd then sums). The other
cases compose the ops.

CPU performance notes (csrc/cpu/loss.cpp): one streaming pass per row in the forward, 2 exps
per element pair in forward and backward, gradients written with non-temporal stores. At
large sizes fresh gradient buffers would dominate (page faults + zeroing: 138 of 258 ms for a
4096 x 32000 symmetric KL fwd+bwd here), so gradients of >= 8 MiB come from a small pool of
already-mapped blocks that freed outputs return to (like CUDA's caching allocator; at most
JANUS_POOL_MB MiB cached, default 2048, 0 = off; ``empty_cache()`` releases it; the attention
kernels share it). New blocks are prefaulted in parallel (MADV_POPULATE_WRITE;
JANUS_LOSS_PREFAULT=0 turns it off) and can use transparent huge pages (JANUS_POOL_THP=1;
opt-in because THP defrag can stall).
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from . import backends as _backends

__all__ = ["symmetric_kl", "cross_entropy", "janus_loss", "fused_linear_janus_loss",
           "fused_linear_cross_entropy", "JanusLossWeights", "empty_cache", "LOSS_TERMS"]

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_REDUCTIONS = ("mean", "sum", "none")
LOSS_TERMS = ("ar_ce", "nar_ce", "aux_ce", "kl_ar_nar", "kl_ar_aux", "kl_nar_aux")


def empty_cache() -> int:
    """Unmap the output blocks the CPU loss and attention kernels keep for reuse (their output
    pool, capped by the JANUS_POOL_MB environment variable, default 2048; 0 disables it).
    Returns the bytes released (0 without the compiled extension)."""
    from .backends import cpu
    return cpu.empty_cache()


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _be(backend: str):
    return _backends.get(backend)


def _pick_backend(backend: Optional[str], op: str, x: torch.Tensor, who: str) -> str:
    """The requested backend after checking it serves `op` for x's device and dtype, or the
    default (janus_kernels/backends derives both from the backends' declarations)."""
    return _backends.resolve(op, backend, x.device, x.dtype, None, who)


def _has_janus_rows(backend: str, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether `backend` has the fused criterion row kernels (janus_fwd / janus_bwd) here."""
    return _backends.why_not("janus_rows", backend, device, dtype) is None


# ====================================================================== custom ops
@torch.library.custom_op("janus::symmetric_kl_fwd", mutates_args=())
def _kl_fwd_op(x: torch.Tensor, y: torch.Tensor, row_mask: Optional[torch.Tensor],
               inv_temperature: float, backend: str) -> Tuple[torch.Tensor, torch.Tensor]:
    loss, stats = _be(backend).kl_fwd(x, y, row_mask, inv_temperature)
    return loss, stats


@_kl_fwd_op.register_fake
def _(x, y, row_mask, inv_temperature, backend):
    R, ct = x.shape[0], _acc(x.dtype)
    return x.new_empty((R,), dtype=ct), x.new_empty((R, 6), dtype=ct)


@torch.library.custom_op("janus::symmetric_kl_bwd", mutates_args=())
def _kl_bwd_op(grad: torch.Tensor, x: torch.Tensor, y: torch.Tensor, stats: torch.Tensor,
               row_mask: Optional[torch.Tensor], inv_temperature: float, backend: str
               ) -> Tuple[torch.Tensor, torch.Tensor]:
    dx, dy = _be(backend).kl_bwd(grad, x, y, stats, row_mask, inv_temperature)
    return dx, dy


@_kl_bwd_op.register_fake
def _(grad, x, y, stats, row_mask, inv_temperature, backend):
    return x.new_empty(x.shape), y.new_empty(y.shape)


def _kl_setup(ctx, inputs, output):
    x, y, row_mask, inv_t, backend = inputs
    ctx.save_for_backward(x, y, output[1], row_mask)
    ctx.args = (inv_t, backend)
    ctx.mark_non_differentiable(output[1])


def _kl_backward(ctx, g_loss, g_stats):
    x, y, stats, row_mask = ctx.saved_tensors
    inv_t, backend = ctx.args
    dx, dy = _kl_bwd_op(g_loss.to(stats.dtype).contiguous(), x, y, stats, row_mask, inv_t,
                        backend)
    return dx, dy, None, None, None


_kl_fwd_op.register_autograd(_kl_backward, setup_context=_kl_setup)


@torch.library.custom_op("janus::cross_entropy_fwd", mutates_args=())
def _ce_fwd_op(x: torch.Tensor, target: torch.Tensor, label_smoothing: float,
               ignore_index: int, backend: str) -> Tuple[torch.Tensor, torch.Tensor]:
    loss, stats = _be(backend).ce_fwd(x, target, label_smoothing, ignore_index)
    return loss, stats


@_ce_fwd_op.register_fake
def _(x, target, label_smoothing, ignore_index, backend):
    R, ct = x.shape[0], _acc(x.dtype)
    return x.new_empty((R,), dtype=ct), x.new_empty((R, 2), dtype=ct)


@torch.library.custom_op("janus::cross_entropy_bwd", mutates_args=())
def _ce_bwd_op(grad: torch.Tensor, x: torch.Tensor, target: torch.Tensor, stats: torch.Tensor,
               label_smoothing: float, ignore_index: int, backend: str) -> torch.Tensor:
    return _be(backend).ce_bwd(grad, x, target, stats, label_smoothing, ignore_index)


@_ce_bwd_op.register_fake
def _(grad, x, target, stats, label_smoothing, ignore_index, backend):
    return x.new_empty(x.shape)


def _ce_setup(ctx, inputs, output):
    x, target, eps, ignore_index, backend = inputs
    ctx.save_for_backward(x, target, output[1])
    ctx.args = (eps, ignore_index, backend)
    ctx.mark_non_differentiable(output[1])


def _ce_backward(ctx, g_loss, g_stats):
    x, target, stats = ctx.saved_tensors
    eps, ignore_index, backend = ctx.args
    dx = _ce_bwd_op(g_loss.to(stats.dtype).contiguous(), x, target, stats, eps, ignore_index,
                    backend)
    return dx, None, None, None, None


_ce_fwd_op.register_autograd(_ce_backward, setup_context=_ce_setup)


# ====================================================================== public API
def _as_rows(t: torch.Tensor, name: str, who: str) -> torch.Tensor:
    """(..., V) -> (R, V) with a unit last stride (a view when possible)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{who}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() < 1:
        raise ValueError(f"{who}: {name} must have a vocabulary dimension, got a 0-d tensor")
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{who}: {name} must be float32/bfloat16/float16/float64, got {t.dtype}")
    if t.shape[-1] == 0:
        raise ValueError(f"{who}: {name} has an empty vocabulary dimension")
    t = t.reshape(-1, t.shape[-1])
    if t.shape[1] > 1 and t.stride(1) != 1:
        t = t.contiguous()
    return t


def _reduce(loss_rows: torch.Tensor, count: Optional[torch.Tensor], reduction: str,
            lead_shape) -> torch.Tensor:
    if reduction == "none":
        return loss_rows.reshape(lead_shape)
    total = loss_rows.sum()
    if reduction == "sum":
        return total
    if count is None:  # a python int: no sync
        return total / max(loss_rows.shape[0], 1)
    return total / count.clamp(min=1).to(total.dtype)


def symmetric_kl(logits_p: torch.Tensor, logits_q: torch.Tensor, *,
                 row_mask: Optional[torch.Tensor] = None, reduction: str = "mean",
                 temperature: float = 1.0, backend: Optional[str] = None) -> torch.Tensor:
    """Bidirectional KL 1/2 [KL(p||q) + KL(q||p)] between softmax(logits_p / T) and
    softmax(logits_q / T), summed over the last (vocabulary) dimension; both inputs get
    gradients.

    Args:
        logits_p, logits_q: (..., V) raw logits, same shape and dtype (fp32/bf16/fp16/fp64),
            any strides. Never modified.
        row_mask: optional bool (...) selecting rows; unselected rows give loss 0, zero
            gradient, and are not read.
        reduction: "mean" (over selected rows; 0 when none is selected), "sum", or "none"
            (per-row losses of shape (...), 0 for unselected rows).
        temperature: T > 0; no T^2 factor is applied.
        backend: "cpu", "cuda", "triton" or "reference" (default:
            ``janus_kernels.default_backend("symmetric_kl", device, dtype)``).

    Returns:
        float32 loss (float64 for float64 logits). See the module docstring for -inf rules.
    """
    who = "symmetric_kl"
    x, y = _as_rows(logits_p, "logits_p", who), _as_rows(logits_q, "logits_q", who)
    if logits_p.shape != logits_q.shape:
        raise ValueError(f"{who}: logits_p and logits_q must have the same shape, got "
                         f"{tuple(logits_p.shape)} and {tuple(logits_q.shape)}")
    if logits_p.dtype != logits_q.dtype:
        raise TypeError(f"{who}: logits_p and logits_q must share a dtype, got "
                        f"{logits_p.dtype} and {logits_q.dtype}")
    if logits_p.device != logits_q.device:
        raise ValueError(f"{who}: logits_p and logits_q must be on one device")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{who}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if not (isinstance(temperature, (int, float)) and temperature > 0
            and temperature != float("inf")):
        raise ValueError(f"{who}: temperature must be a positive finite number, got "
                         f"{temperature!r}")
    lead = logits_p.shape[:-1]
    mask, count = None, None
    if row_mask is not None:
        if not isinstance(row_mask, torch.Tensor) or row_mask.dtype != torch.bool:
            raise TypeError(f"{who}: row_mask must be a bool tensor of shape {tuple(lead)}")
        if row_mask.shape != lead:
            raise ValueError(f"{who}: row_mask must have shape {tuple(lead)} (the logits "
                             f"without the vocabulary dim), got {tuple(row_mask.shape)}")
        mask = row_mask.reshape(-1).to(x.device).contiguous()
        count = mask.sum()
    backend = _pick_backend(backend, "symmetric_kl", x, who)
    loss_rows, _ = _kl_fwd_op(x, y, mask, 1.0 / float(temperature), backend)
    return _reduce(loss_rows, count, reduction, lead)


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, *, label_smoothing: float = 0.0,
                  ignore_index: int = -100, reduction: str = "mean",
                  backend: Optional[str] = None) -> torch.Tensor:
    """JANUS label-smoothed cross entropy:
    (1 - eps)(-log p_target) + eps * mean_v(-log p_v), p = softmax(logits).

    Args:
        logits: (..., V) raw logits (fp32/bf16/fp16/fp64), any strides; never modified.
        target: integer (...) class indices; rows equal to ``ignore_index`` give loss 0 and
            zero gradient.
        label_smoothing: eps in [0, 1].
        reduction: "mean" over non-ignored rows (0 if all are ignored), "sum", or "none".
        backend: "cpu", "cuda", "triton" or "reference" (default: see symmetric_kl).

    Returns:
        float32 loss (float64 for float64 logits); equals ``F.cross_entropy`` (same eps) on
        non-ignored rows.
    """
    who = "cross_entropy"
    x = _as_rows(logits, "logits", who)
    lead = logits.shape[:-1]
    if not isinstance(target, torch.Tensor) or target.dtype.is_floating_point or \
            target.dtype == torch.bool:
        raise TypeError(f"{who}: target must be an integer tensor of class indices")
    if target.shape != lead:
        raise ValueError(f"{who}: target must have shape {tuple(lead)}, got "
                         f"{tuple(target.shape)}")
    if not 0.0 <= float(label_smoothing) <= 1.0:
        raise ValueError(f"{who}: label_smoothing must be in [0, 1], got {label_smoothing}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{who}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    t = target.reshape(-1).to(device=x.device, dtype=torch.int64).contiguous()
    backend = _pick_backend(backend, "cross_entropy", x, who)
    loss_rows, _ = _ce_fwd_op(x, t, float(label_smoothing), int(ignore_index), backend)
    count = (t != ignore_index).sum() if reduction == "mean" else None
    return _reduce(loss_rows, count, reduction, lead)


# ================================================================ JANUS criterion
@dataclasses.dataclass(frozen=True)
class JanusLossWeights:
    """Weights of the JANUS NMT criterion terms. KL weights multiply the *symmetric* KL
    1/2[KL(p||q) + KL(q||p)].

    Defaults are the released code (janus_spec.md 6.1): CE 1 / 0.5 / 0.5 (AR / NAR / AUX),
    symmetric KL 1 (AR-NAR) / 3 (AR-AUX) / 1 (NAR-AUX), length 0.1.
    """
    ar_ce: float = 1.0
    nar_ce: float = 0.5
    aux_ce: float = 0.5
    kl_ar_nar: float = 1.0
    kl_ar_aux: float = 3.0
    kl_nar_aux: float = 1.0
    length: float = 0.1

    @classmethod
    def paper(cls) -> "JanusLossWeights":
        """Paper Eq. 5: unit weights on the three CEs and on each of the four *one-directional*
        KLs D(AR|AUX), D(AUX|AR), D(NAR|AUX), D(AUX|NAR) (no direct AR-NAR term). In units of
        the symmetric KL that is weight 2 on AR-AUX and NAR-AUX and 0 on AR-NAR. The paper
        gives no length-loss weight; the code's 0.1 is kept."""
        return cls(1.0, 1.0, 1.0, 0.0, 2.0, 2.0, 0.1)

    def as_tuple(self) -> Tuple[float, ...]:
        return (self.ar_ce, self.nar_ce, self.aux_ce, self.kl_ar_nar, self.kl_ar_aux,
                self.kl_nar_aux)


def _kl_row_index(ar_kl_rows: torch.Tensor, n_ar: int, m: int, device, who: str) -> torch.Tensor:
    """AR row index per masked row: a LongTensor (M,) as given, or a bool (N_ar,) mask with
    M True entries (in ascending order; converted without a host sync)."""
    if not isinstance(ar_kl_rows, torch.Tensor):
        raise TypeError(f"{who}: ar_kl_rows must be a tensor (int64 indices (M,) or bool (N_ar,))")
    if ar_kl_rows.dtype == torch.bool:
        if ar_kl_rows.shape != (n_ar,):
            raise ValueError(f"{who}: a bool ar_kl_rows must have shape ({n_ar},) (one flag per "
                             f"AR row), got {tuple(ar_kl_rows.shape)}")
        # checked where it costs no device sync (eager CPU; the kernels check what they index)
        if ar_kl_rows.device.type == "cpu" and not torch.compiler.is_compiling():
            count = int(ar_kl_rows.sum())
            if count != m:
                raise ValueError(f"{who}: a bool ar_kl_rows must have exactly M={m} True "
                                 f"entries (one per masked row), got {count}")
        return torch.nonzero_static(ar_kl_rows.to(device), size=m).reshape(-1)
    if ar_kl_rows.dtype.is_floating_point or ar_kl_rows.shape != (m,):
        raise ValueError(f"{who}: integer ar_kl_rows must have shape ({m},) (one AR row per "
                         f"masked row), got {ar_kl_rows.dtype} {tuple(ar_kl_rows.shape)}")
    if ar_kl_rows.device.type == "cpu" and m > 0 and not torch.compiler.is_compiling():
        lo, hi = int(ar_kl_rows.min()), int(ar_kl_rows.max())
        if lo < 0 or hi >= n_ar:
            raise ValueError(f"{who}: ar_kl_rows holds AR row indices, which must be in "
                             f"[0, N_ar={n_ar}); got values in [{lo}, {hi}]")
    return ar_kl_rows.to(device=device, dtype=torch.int64)


def _check_janus_shapes(who, ar, nar, aux, ar_targets, masked_targets):
    if nar.shape != aux.shape:
        raise ValueError(f"{who}: NAR and AUX inputs must have the same shape, got "
                         f"{tuple(nar.shape)} and {tuple(aux.shape)}")
    if ar.dim() != 2 or nar.dim() != 2 or ar.shape[1] != nar.shape[1]:
        raise ValueError(f"{who}: expected 2-D AR (N_ar, D) and NAR/AUX (M, D) inputs with the "
                         f"same last dim, got {tuple(ar.shape)} and {tuple(nar.shape)}")
    if ar_targets.shape != (ar.shape[0],):
        raise ValueError(f"{who}: ar_targets must have shape ({ar.shape[0]},), got "
                         f"{tuple(ar_targets.shape)}")
    if masked_targets.shape != (nar.shape[0],):
        raise ValueError(f"{who}: masked_targets must have shape ({nar.shape[0]},), got "
                         f"{tuple(masked_targets.shape)}")


def _length_term(length_logits, length_targets):
    if length_logits is None:
        return None
    if length_targets is None:
        raise ValueError("janus_loss: length_logits given without length_targets")
    return F.cross_entropy(length_logits.float(), length_targets)


def janus_loss(ar_logits: torch.Tensor, nar_logits: torch.Tensor, aux_logits: torch.Tensor,
               ar_targets: torch.Tensor, masked_targets: torch.Tensor,
               ar_kl_rows: torch.Tensor, *, weights: JanusLossWeights = JanusLossWeights(),
               label_smoothing: float = 0.1, ignore_index: int = -100,
               length_logits: Optional[torch.Tensor] = None,
               length_targets: Optional[torch.Tensor] = None,
               backend: Optional[str] = None) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """The JANUS NMT criterion (janus_spec.md 6.1) from logits::

        total = w.ar_ce  CE_eps(AR, ar_targets)           # all AR rows
              + w.nar_ce CE_eps(NAR, masked_targets) + w.aux_ce CE_eps(AUX, masked_targets)
              + w.kl_ar_nar KLs(AR[kl rows], NAR) + w.kl_ar_aux KLs(AR[kl rows], AUX)
              + w.kl_nar_aux KLs(NAR, AUX) [+ w.length CE(length_logits, length_targets)]

    Every term is a mean over its own rows (rows whose target is ``ignore_index`` are left out,
    for the KL terms too); an empty row set gives 0.

    Args:
        ar_logits: (N_ar, V) AR query-stream logits (flattened, non-pad rows).
        nar_logits, aux_logits: (M, V) content-stream logits at masked rows / AUX query-stream
            logits, aligned row by row.
        ar_targets: (N_ar,) int; masked_targets: (M,) int.
        ar_kl_rows: the AR row of each masked row: int64 (M,), or a bool (N_ar,) mask whose M
            True entries are in the same (ascending) order as the NAR/AUX rows.
        weights: ``JanusLossWeights()`` (released code) or ``JanusLossWeights.paper()``.
        length_logits, length_targets: optional length-prediction term (no smoothing).

    Returns:
        (total, terms): terms maps each name in ``LOSS_TERMS`` (and "length" when given) to
        its unweighted value; all are differentiable.
    """
    who = "janus_loss"
    _check_janus_shapes(who, ar_logits, nar_logits, aux_logits, ar_targets, masked_targets)
    M = nar_logits.shape[0]
    idx = _kl_row_index(ar_kl_rows, ar_logits.shape[0], M, ar_logits.device, who)
    if not ar_logits.dtype == nar_logits.dtype == aux_logits.dtype:
        raise TypeError(f"{who}: ar_logits, nar_logits and aux_logits must share a dtype, got "
                        f"{ar_logits.dtype}, {nar_logits.dtype} and {aux_logits.dtype}")
    if not ar_logits.device == nar_logits.device == aux_logits.device:
        raise ValueError(f"{who}: ar_logits, nar_logits and aux_logits must be on one device")
    backend = _pick_backend(backend, "cross_entropy", ar_logits, who)
    terms_of = _janus_terms_fused if _has_janus_rows(backend, ar_logits.device, ar_logits.dtype) \
        else _janus_terms_composed
    terms = terms_of(ar_logits, nar_logits, aux_logits, ar_targets, masked_targets, idx,
                     float(label_smoothing), int(ignore_index), backend)
    total = sum(w * terms[k] for k, w in zip(LOSS_TERMS, weights.as_tuple()) if w != 0)
    if not isinstance(total, torch.Tensor):  # every weight is 0
        total = terms["ar_ce"] * 0
    length = _length_term(length_logits, length_targets)
    if length is not None:
        terms["length"] = length
        total = total + weights.length * length.to(total.dtype)
    return total, terms


def _janus_terms_composed(ar_logits, nar_logits, aux_logits, ar_targets, masked_targets, idx,
                          eps, ignore_index, backend) -> Dict[str, torch.Tensor]:
    """The six JANUS terms from the separate ops (any backend): each logit row is read by
    up to three ops and each term writes its own gradient tensors."""
    kw = dict(backend=backend)
    valid = (masked_targets != ignore_index).to(nar_logits.device)
    ar_sel = ar_logits.index_select(0, idx)
    return {
        "ar_ce": cross_entropy(ar_logits, ar_targets, label_smoothing=eps,
                               ignore_index=ignore_index, **kw),
        "nar_ce": cross_entropy(nar_logits, masked_targets, label_smoothing=eps,
                                ignore_index=ignore_index, **kw),
        "aux_ce": cross_entropy(aux_logits, masked_targets, label_smoothing=eps,
                                ignore_index=ignore_index, **kw),
        "kl_ar_nar": symmetric_kl(ar_sel, nar_logits, row_mask=valid, **kw),
        "kl_ar_aux": symmetric_kl(ar_sel, aux_logits, row_mask=valid, **kw),
        "kl_nar_aux": symmetric_kl(nar_logits, aux_logits, row_mask=valid, **kw),
    }


def _janus_terms_fused(ar_logits, nar_logits, aux_logits, ar_targets, masked_targets, idx,
                       eps, ignore_index, backend) -> Dict[str, torch.Tensor]:
    """The six JANUS terms from one fused row op (CPU: csrc/cpu/janus_loss.cpp, which states
    the math; Triton: janus_kernels/triton/janus_loss.py): each logit row is read once per
    pass (3 exps per element triple instead of 9) and the backward writes the three logit
    gradients once each. Backend raw functions::

        janus_fwd(ar, nar, aux, ar_t, m_t, idx, eps, ignore_index)
            -> (ar_loss (N,), masked_loss (M, 5), ar_stats (N, 2), masked_stats (M, 12))
        janus_bwd(g_ar (N,), g_masked (M, 5), ar, nar, aux, ar_t, m_t, idx, ar_stats,
                  masked_stats, eps, ignore_index) -> (d_ar, d_nar, d_aux)

    masked_loss columns: CE(NAR), CE(AUX), KLs(AR, NAR), KLs(AR, AUX), KLs(NAR, AUX); a zero
    upstream gradient drops its term from the backward."""
    who = "janus_loss"
    ar = _as_rows(ar_logits, "ar_logits", who)
    nar = _as_rows(nar_logits, "nar_logits", who)
    aux = _as_rows(aux_logits, "aux_logits", who)
    for name, t in (("ar_targets", ar_targets), ("masked_targets", masked_targets)):
        if not isinstance(t, torch.Tensor) or t.dtype.is_floating_point or t.dtype == torch.bool:
            raise TypeError(f"{who}: {name} must be an integer tensor of class indices")
    ar_t = ar_targets.to(device=ar.device, dtype=torch.int64).contiguous()
    m_t = masked_targets.to(device=ar.device, dtype=torch.int64).contiguous()
    ar_loss, m_loss, _, _ = _janus_rows_op(ar, nar, aux, ar_t, m_t, idx.contiguous(), eps,
                                           ignore_index, backend)
    n_ar = (ar_t != ignore_index).sum().clamp(min=1).to(ar_loss.dtype)
    n_m = (m_t != ignore_index).sum().clamp(min=1).to(ar_loss.dtype)
    sums = m_loss.sum(0)
    return {"ar_ce": ar_loss.sum() / n_ar, "nar_ce": sums[0] / n_m, "aux_ce": sums[1] / n_m,
            "kl_ar_nar": sums[2] / n_m, "kl_ar_aux": sums[3] / n_m, "kl_nar_aux": sums[4] / n_m}


@torch.library.custom_op("janus::janus_rows", mutates_args=())
def _janus_rows_op(ar: torch.Tensor, nar: torch.Tensor, aux: torch.Tensor, ar_t: torch.Tensor,
                   m_t: torch.Tensor, idx: torch.Tensor, label_smoothing: float,
                   ignore_index: int, backend: str
                   ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _be(backend).janus_fwd(ar, nar, aux, ar_t, m_t, idx, label_smoothing,
                                        ignore_index)


@_janus_rows_op.register_fake
def _(ar, nar, aux, ar_t, m_t, idx, label_smoothing, ignore_index, backend):
    ct = _acc(ar.dtype)
    N, M = ar.shape[0], nar.shape[0]
    return (ar.new_empty((N,), dtype=ct), ar.new_empty((M, 5), dtype=ct),
            ar.new_empty((N, 2), dtype=ct), ar.new_empty((M, 12), dtype=ct))


@torch.library.custom_op("janus::janus_rows_backward", mutates_args=())
def _janus_rows_bwd_op(g_ar: torch.Tensor, g_m: torch.Tensor, ar: torch.Tensor,
                       nar: torch.Tensor, aux: torch.Tensor, ar_t: torch.Tensor,
                       m_t: torch.Tensor, idx: torch.Tensor, ar_st: torch.Tensor,
                       m_st: torch.Tensor, label_smoothing: float, ignore_index: int,
                       backend: str) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _be(backend).janus_bwd(g_ar, g_m, ar, nar, aux, ar_t, m_t, idx, ar_st, m_st,
                                        label_smoothing, ignore_index)


@_janus_rows_bwd_op.register_fake
def _(g_ar, g_m, ar, nar, aux, ar_t, m_t, idx, ar_st, m_st, label_smoothing, ignore_index,
      backend):
    return ar.new_empty(ar.shape), nar.new_empty(nar.shape), aux.new_empty(aux.shape)


def _janus_rows_setup(ctx, inputs, output):
    ar, nar, aux, ar_t, m_t, idx, eps, ignore_index, backend = inputs
    ctx.save_for_backward(ar, nar, aux, ar_t, m_t, idx, output[2], output[3])
    ctx.eps, ctx.ignore_index, ctx.backend = eps, ignore_index, backend
    ctx.mark_non_differentiable(output[2], output[3])


def _janus_rows_backward(ctx, g_ar, g_m, g_ar_st, g_m_st):
    ar, nar, aux, ar_t, m_t, idx, ar_st, m_st = ctx.saved_tensors
    g_ar = torch.zeros_like(ar_st[:, 0]) if g_ar is None else g_ar.contiguous()
    g_m = torch.zeros_like(m_st[:, :5]) if g_m is None else g_m.contiguous()
    da, dn, dx = _janus_rows_bwd_op(g_ar, g_m, ar, nar, aux, ar_t, m_t, idx, ar_st, m_st,
                                    ctx.eps, ctx.ignore_index, ctx.backend)
    return da, dn, dx, None, None, None, None, None, None


_janus_rows_op.register_autograd(_janus_rows_backward, setup_context=_janus_rows_setup)


# The fused-linear criterion (from hidden states, logits never materialized) lives in its own
# module; re-exported here, where its documentation and callers expect it.
from .fused_linear import (  # noqa: E402,F401  (after the names it uses)
    fused_linear_cross_entropy, fused_linear_janus_loss)
