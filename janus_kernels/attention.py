"""`janus_kernels.attention`: flash-style attention with a structured mask generated inside
the kernel from a :class:`~janus_kernels.masks.MaskDescriptor`.

Layering (as FlashAttention's interface): the public function validates and picks a
backend; ``janus::attention_fwd`` / ``janus::attention_bwd`` are ``torch.library``
custom ops (fake impls + autograd, so ``torch.compile(fullgraph=True)`` and ``opcheck``
work); each backend implements the same two raw functions::

    fwd(q, k, v, params, rank, q_split, kind, scale, dropout_p, seed, rel_bias, softcap)
        -> (out, lse)
    bwd(dout, q, k, v, out, lse, params, rank, q_split, kind, scale, dropout_p, seed,
        rel_bias, softcap) -> (dq, dk, dv, d_rel_bias)

Backends (janus_kernels/backends: each declares what it serves, dispatch follows): ``"cpu"``
(the compiled CPU kernels at the CPU's ISA level), ``"cuda"`` (CUDA C++), ``"triton"`` (GPU,
or the interpreter under TRITON_INTERPRET=1), ``"reference"`` (dense eager PyTorch,
materializes the mask; any device, slow). ``"cpp"`` is an alias of "cpu" / "cuda".
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from . import backends as _backends
from .masks import MaskDescriptor

__all__ = ["attention"]

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
MAX_HEAD_DIM = 256


def _impl(backend: str):
    return _backends.for_custom_op(backend, "attention")


# ========================================================================= custom ops
@torch.library.custom_op("janus::attention_fwd", mutates_args=())
def _attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, params: torch.Tensor,
                   rank: Optional[torch.Tensor], q_split: int, kind: int, scale: float,
                   dropout_p: float, seed: Optional[torch.Tensor], backend: str,
                   lse_grad: bool = False, rel_bias: Optional[torch.Tensor] = None,
                   softcap: float = 0.0) -> Tuple[torch.Tensor, torch.Tensor]:
    o, lse = _impl(backend).attention_fwd(q, k, v, params, rank, q_split, kind, scale,
                                          dropout_p, seed, rel_bias, softcap)
    return o, lse


@_attention_fwd.register_fake
def _(q, k, v, params, rank, q_split, kind, scale, dropout_p, seed, backend, lse_grad=False,
      rel_bias=None, softcap=0.0):
    B, H, Lq, _ = q.shape   # contiguous, like every backend's outputs
    return q.new_empty(q.shape[:-1] + (v.shape[-1],)), q.new_empty((B, H, Lq), dtype=torch.float32)


@torch.library.custom_op("janus::attention_bwd", mutates_args=())
def _attention_bwd(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   out: torch.Tensor, lse: torch.Tensor, params: torch.Tensor,
                   rank: Optional[torch.Tensor], q_split: int, kind: int, scale: float,
                   dropout_p: float, seed: Optional[torch.Tensor], backend: str,
                   rel_bias: Optional[torch.Tensor] = None, softcap: float = 0.0
                   ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    dq, dk, dv, drel = _impl(backend).attention_bwd(dout, q, k, v, out, lse, params, rank,
                                                    q_split, kind, scale, dropout_p, seed,
                                                    rel_bias, softcap)
    return dq, dk, dv, drel


@_attention_bwd.register_fake
def _(dout, q, k, v, out, lse, params, rank, q_split, kind, scale, dropout_p, seed, backend,
      rel_bias=None, softcap=0.0):
    # every backend returns contiguous gradients, whatever the inputs' strides (e.g. the
    # (B, L, H, d).transpose(1, 2) layout of nn.MultiheadAttention and HF models)
    drel = q.new_empty((0,) if rel_bias is None else rel_bias.shape, dtype=torch.float32)
    return (q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), drel)


def _no_double_backward(ctx, *grads):
    raise RuntimeError("janus_kernels.attention: double backward (gradients of gradients) is "
                       "not supported; use torch.nn.functional.scaled_dot_product_attention "
                       "with the dense mask (mask.materialize()) for higher-order gradients")


_attention_bwd.register_autograd(_no_double_backward)


def _setup_context(ctx, inputs, output):
    (q, k, v, params, rank, q_split, kind, scale, dropout_p, seed, backend, lse_grad, rel_bias,
     softcap) = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse, params, rank, seed, rel_bias)
    ctx.args = (q_split, kind, scale, dropout_p, backend, lse_grad, softcap)


def _grads(bwd, ctx, dout, dlse):
    """(dq, dk, dv) from what setup saved on ctx, through ``bwd`` (the custom op or the raw
    backend function); the trailing Nones are the non-tensor inputs' gradients.

    The log-sum-exp is differentiable: d lse_i / d s_ij = P_ij, so its gradient adds
    dS_ij += dlse_i P_ij. The kernels' backward computes dS = P (dP - delta) with
    dP_ij = dO_i . v_j and delta_i = dO_i . o_i; a second call with dO' = [dlse, 0, ...],
    V' = [1, 0, ...] and O' = 0 (so dP'_ij = dlse_i, delta' = 0) and no dropout (lse is
    taken before dropout) gives exactly that term's dq, dk (and relative-bias gradient) on
    every backend."""
    q, k, v, o, lse, params, rank, seed, rel_bias = ctx.saved_tensors
    q_split, kind, scale, dropout_p, backend, lse_grad, softcap = ctx.args
    if dout is None:
        dout = torch.zeros_like(o)
    dq, dk, dv, drel = bwd(dout.contiguous(), q, k, v, o, lse, params, rank, q_split, kind,
                           scale, dropout_p, seed, backend, rel_bias, softcap)
    if lse_grad and dlse is not None:   # lse_grad: the caller returned lse (return_lse=True)
        g = torch.zeros_like(o)
        g[..., 0] = dlse.to(g.dtype)
        ones = torch.zeros_like(v)
        ones[..., 0] = 1
        dq2, dk2, _, drel2 = bwd(g, q, k, ones, torch.zeros_like(o), lse, params, rank, q_split,
                                 kind, scale, 0.0, None, backend, rel_bias, softcap)
        dq, dk = dq + dq2, dk + dk2
        if rel_bias is not None:
            drel = drel + drel2
    return (dq, dk, dv) + (None,) * 9 + (drel if rel_bias is not None else None, None)


def _backward(ctx, dout, dlse):
    return _grads(_attention_bwd, ctx, dout, dlse)


_attention_fwd.register_autograd(_backward, setup_context=_setup_context)


class _EagerAttention(torch.autograd.Function):
    """The same forward / backward as the custom ops above, for eager mode only. A
    ``torch.library`` custom op with autograd costs ~100 us of Python per fwd+bwd (schema
    default filling, redispatch), against ~7 us for the kernel launch at tiny shapes and a
    few ms per call at IWSLT-sized batches; under torch.compile (and for opcheck) the
    registered custom op is used instead, so graphs still see ``janus::attention_fwd``."""

    @staticmethod
    def forward(ctx, q, k, v, params, rank, q_split, kind, scale, dropout_p, seed, backend,
                lse_grad, rel_bias, softcap):
        inputs = (q, k, v, params, rank, q_split, kind, scale, dropout_p, seed, backend, lse_grad,
                  rel_bias, softcap)
        out = _impl(backend).attention_fwd(*inputs[:10], rel_bias, softcap)
        _setup_context(ctx, inputs, out)
        ctx.set_materialize_grads(False)   # an unused lse gets None: no second pass
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout, dlse):
        return _grads(lambda *a: _impl(a[13]).attention_bwd(*a[:13], *a[14:]), ctx, dout, dlse)


# ========================================================================== public API
def _check_score_mods(q, k, softcap, rel_bias) -> Tuple[float, Optional[torch.Tensor]]:
    """Validated (softcap as a float, 0 = off; rel_bias as float32 contiguous or None)."""
    if softcap is not None:
        if isinstance(softcap, bool) or not isinstance(softcap, (int, float)):
            raise TypeError(f"attention: softcap must be a float or None, got "
                            f"{type(softcap).__name__}")
        if not (math.isfinite(softcap) and softcap > 0):
            raise ValueError(f"attention: softcap must be finite and > 0 (None: off), got "
                             f"{softcap}")
    if rel_bias is not None:
        H, Lq, Lk = q.shape[1], q.shape[2], k.shape[2]
        want = (H, max(Lq + Lk - 1, 0))
        if not isinstance(rel_bias, torch.Tensor):
            raise TypeError(f"attention: rel_bias must be a torch.Tensor or None, got "
                            f"{type(rel_bias).__name__}")
        if tuple(rel_bias.shape) != want or not rel_bias.is_floating_point() \
                or rel_bias.device != q.device:
            raise ValueError(f"attention: rel_bias must be a float tensor of shape (H, Lq + Lk "
                             f"- 1) = {want} on {q.device} (janus_kernels.score_mods builds "
                             f"one), got {str(rel_bias.dtype).replace('torch.', '')} "
                             f"{tuple(rel_bias.shape)} on {rel_bias.device}")
        rel_bias = rel_bias.float().contiguous()
    return float(softcap or 0.0), rel_bias


def _check_inputs(q, k, v, mask, dropout_p) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"attention: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"attention: {name} must be 4-D (B, heads, length, head_dim), "
                             f"got shape {tuple(t.shape)}")
        if t.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"attention: {name} must be float32/bfloat16/float16/float64, "
                            f"got {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"attention: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"attention: q, k, v must be on one device, got {q.device}, "
                         f"{k.device}, {v.device}")
    B, H, Lq, d = q.shape
    if k.shape != v.shape:
        raise ValueError(f"attention: k and v must have the same shape, got {tuple(k.shape)} "
                         f"and {tuple(v.shape)}")
    if k.shape[0] != B or k.shape[3] != d:
        raise ValueError(f"attention: k must be (B={B}, Hkv, Lk, d={d}), got {tuple(k.shape)}")
    Hkv = k.shape[1]
    if Hkv == 0 or H % Hkv != 0:
        raise ValueError(f"attention: the heads of q ({H}) must be a multiple of the heads of "
                         f"k/v ({Hkv}) (grouped-query attention)")
    if not 1 <= d <= MAX_HEAD_DIM:
        raise ValueError(f"attention: head_dim must be in [1, {MAX_HEAD_DIM}], got {d}")
    if not isinstance(mask, MaskDescriptor):
        raise TypeError(f"attention: mask must be a janus_kernels.masks.MaskDescriptor (see "
                        f"janus_kernels.masks factories), got {type(mask).__name__}")
    mask.check(B, Lq, k.shape[2], q.device)
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"attention: dropout_p must be in [0, 1), got {dropout_p}")


def _needs_grad(*tensors: Optional[torch.Tensor]) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: MaskDescriptor, *,
              scale: Optional[float] = None, dropout_p: float = 0.0,
              seed: Optional[int] = None, return_lse: bool = False,
              backend: Optional[str] = None, softcap: Optional[float] = None,
              rel_bias: Optional[torch.Tensor] = None):
    """Scaled dot-product attention under a structured mask, never materialized.

    Args:
        q: (B, H, Lq, d). Lq may exceed Lk (JANUS: content + query rows vs content keys).
        k, v: (B, Hkv, Lk, d) with H % Hkv == 0 (grouped-query attention).
        mask: a MaskDescriptor built for (Lq, Lk), e.g. ``janus_nar_mask(U, M, Lc, Lq)``.
        scale: softmax scale, default ``d ** -0.5``.
        dropout_p: attention dropout; the keep-mask is drawn in-kernel from Philox keyed by
            ``seed`` and (b, h, i, j), identical on every backend.
        seed: dropout seed (default: drawn from torch's CPU generator).
        return_lse: also return the log-sum-exp (B, H, Lq) float32.
        backend: "cpu", "cuda", "triton" or "reference" (default: the serving backend of
            highest priority, ``janus_kernels.default_backend("attention", ...)``); one
            that cannot serve the call raises ``BackendError`` saying why.
        softcap: logit soft-capping (Gemma-2): the scaled score s becomes
            ``softcap * tanh(s / softcap)``.
        rel_bias: (H, Lq + Lk - 1) table added to the score of row i and key j at column
            ``j - i + Lq - 1`` (after the softcap): ALiBi, T5 relative positions (see
            ``janus_kernels.score_mods``); differentiable.

    Returns:
        out (B, H, Lq, d) in q's dtype, contiguous (and lse, differentiable). Rows that see
        no key (padding rows, the first query of a permutation) give zeros and lse = -inf,
        with zero gradients.
    """
    _check_inputs(q, k, v, mask, dropout_p)
    softcap, rel_bias = _check_score_mods(q, k, softcap, rel_bias)
    features = (("softcap",) if softcap else ()) + (("rel_bias",) if rel_bias is not None else ())
    backend = _backends.resolve("attention", backend, q.device, q.dtype, q.shape[-1],
                                "attention", features)
    scale = float(q.shape[-1] ** -0.5 if scale is None else scale)
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"attention: scale must be a finite positive number, got {scale}")
    seed_t = None
    if dropout_p > 0:
        if seed is None:
            seed = int(torch.randint(0, 2 ** 62, (1,)).item())
        seed_t = torch.tensor([seed], dtype=torch.int64)
    args = (q, k, v, mask.params, mask.rank, mask.q_split, int(mask.kind), scale,
            float(dropout_p), seed_t)
    if torch.compiler.is_compiling():
        o, lse = _attention_fwd(*args, backend, bool(return_lse), rel_bias, softcap)
    elif _needs_grad(q, k, v, rel_bias):
        o, lse = _EagerAttention.apply(*args, backend, bool(return_lse), rel_bias, softcap)
    else:   # inference (no_grad, or no input requiring grad): no autograd node to build
        o, lse = _impl(backend).attention_fwd(*args, rel_bias, softcap)
    return (o, lse) if return_lse else o
