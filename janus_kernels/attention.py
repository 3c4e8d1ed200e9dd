"""`janus_kernels.attention`: flash-style attention with a structured mask generated inside
the kernel from a :class:`~janus_kernels.masks.MaskDescriptor`.

Layering (as FlashAttention's interface): the public function validates and picks a
backend; ``janus::attention_fwd`` / ``janus::attention_bwd`` are ``torch.library``
custom ops (fake impls + autograd, so ``torch.compile(fullgraph=True)`` and ``opcheck``
work); each backend implements the same two raw functions::

    fwd(q, k, v, params, rank, q_split, kind, scale, dropout_p, seed) -> (out, lse)
    bwd(dout, q, k, v, out, lse, params, rank, q_split, kind, scale, dropout_p, seed)
        -> (dq, dk, dv)

Backends: ``"cpp"`` (the compiled CPU kernel; CUDA kernel on CUDA tensors), ``"triton"``
(GPU, or the interpreter under TRITON_INTERPRET=1), ``"reference"`` (dense eager PyTorch,
materializes the mask; any device, slow).
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple, Union

import torch

from . import _ext
from .dropout import dropout_keep_mask
from .masks import Kind, MaskDescriptor
from .reference import reference_attention, reference_attention_backward

__all__ = ["attention", "available_backends", "default_backend"]

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
MAX_HEAD_DIM = 256


# ============================================================================ backends
def _descriptor(params, rank, q_split, kind, Lq, Lk) -> MaskDescriptor:
    return MaskDescriptor(params, Lq, Lk, q_split, Kind(kind), rank)


def _reference_fwd(q, k, v, params, rank, q_split, kind, scale, dropout_p, seed):
    B, H, Lq, _ = q.shape
    allowed = _descriptor(params, rank, q_split, kind, Lq, k.shape[2]).materialize()
    keep = None
    if dropout_p > 0:
        keep = dropout_keep_mask(int(seed[0]), B, H, Lq, k.shape[2], dropout_p, q.device)
    o, lse = reference_attention(q, k, v, allowed, scale=scale, keep=keep,
                                 dropout_p=dropout_p, return_lse=True)
    return o, lse.float()


def _reference_bwd(dout, q, k, v, out, lse, params, rank, q_split, kind, scale, dropout_p, seed):
    B, H, Lq, _ = q.shape
    allowed = _descriptor(params, rank, q_split, kind, Lq, k.shape[2]).materialize()
    keep = None
    if dropout_p > 0:
        keep = dropout_keep_mask(int(seed[0]), B, H, Lq, k.shape[2], dropout_p, q.device)
    return reference_attention_backward(dout, q, k, v, allowed, scale=scale, keep=keep,
                                        dropout_p=dropout_p)


def _cpp_fwd(*args):
    _ext.require("attention backend 'cpp'")
    return tuple(torch.ops.janus.flash_attention_fwd(*args))


def _cpp_bwd(*args):
    _ext.require("attention backend 'cpp'")
    return tuple(torch.ops.janus.flash_attention_bwd(*args))


def _triton_fwd(*args):
    from .triton import attention as tri
    return tri.attention_fwd(*args)


def _triton_bwd(*args):
    from .triton import attention as tri
    return tri.attention_bwd(*args)


_BACKENDS: Dict[str, Tuple[Callable, Callable]] = {
    "cpp": (_cpp_fwd, _cpp_bwd),
    "triton": (_triton_fwd, _triton_bwd),
    "reference": (_reference_fwd, _reference_bwd),
}


def _triton_usable(device: torch.device) -> bool:
    import os
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    from . import triton as _tri_pkg  # noqa: F401  (may not exist in minimal installs)
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def default_backend(device: Union[str, torch.device], dtype: torch.dtype = torch.float32,
                    head_dim: int = 64) -> str:
    """The backend `attention` uses when none is given: the compiled kernel where it exists
    (CPU; CUDA when the extension has CUDA kernels), else Triton on GPU, else the dense
    reference."""
    device = torch.device(device)
    if dtype == torch.float64:
        return "reference"
    if device.type == "cpu":
        return "cpp" if _ext.available() else "reference"
    if device.type == "cuda":
        # the CUDA C++ kernels cover fp16/bf16 with head dims that are multiples of 8, <= 128
        if _ext.has_cuda_kernels() and dtype in (torch.float16, torch.bfloat16) \
                and head_dim % 8 == 0 and head_dim <= 128:
            return "cpp"
        try:
            if _triton_usable(device):
                return "triton"
        except ImportError:
            pass
    return "reference"


def available_backends(device: Union[str, torch.device] = "cpu") -> Dict[str, str]:
    """Backend name -> 'yes' or the reason it is unavailable on `device`."""
    device = torch.device(device)
    out = {"reference": "yes"}
    if device.type == "cpu":
        out["cpp"] = "yes" if _ext.available() else "extension not built"
    else:
        out["cpp"] = "yes" if _ext.has_cuda_kernels() else "extension built without CUDA"
    try:
        out["triton"] = "yes" if _triton_usable(device) else \
            "needs a CUDA device (or TRITON_INTERPRET=1 on CPU)"
    except ImportError as e:
        out["triton"] = f"not importable ({e})"
    return out


# ========================================================================= custom ops
@torch.library.custom_op("janus::attention_fwd", mutates_args=())
def _attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, params: torch.Tensor,
                   rank: Optional[torch.Tensor], q_split: int, kind: int, scale: float,
                   dropout_p: float, seed: Optional[torch.Tensor], backend: str
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
    o, lse = _BACKENDS[backend][0](q, k, v, params, rank, q_split, kind, scale, dropout_p, seed)
    return o, lse


@_attention_fwd.register_fake
def _(q, k, v, params, rank, q_split, kind, scale, dropout_p, seed, backend):
    B, H, Lq, _ = q.shape
    return q.new_empty(q.shape[:-1] + (v.shape[-1],)), q.new_empty((B, H, Lq), dtype=torch.float32)


@torch.library.custom_op("janus::attention_bwd", mutates_args=())
def _attention_bwd(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   out: torch.Tensor, lse: torch.Tensor, params: torch.Tensor,
                   rank: Optional[torch.Tensor], q_split: int, kind: int, scale: float,
                   dropout_p: float, seed: Optional[torch.Tensor], backend: str
                   ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dq, dk, dv = _BACKENDS[backend][1](dout, q, k, v, out, lse, params, rank, q_split, kind,
                                       scale, dropout_p, seed)
    return dq, dk, dv


@_attention_bwd.register_fake
def _(dout, q, k, v, out, lse, params, rank, q_split, kind, scale, dropout_p, seed, backend):
    # TEMP (lead's attention.py change): every backend returns contiguous gradients
    return tuple(torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v))


def _setup_context(ctx, inputs, output):
    q, k, v, params, rank, q_split, kind, scale, dropout_p, seed, backend = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse, params, rank, seed)
    ctx.args = (q_split, kind, scale, dropout_p, backend)


def _grads(bwd, ctx, dout):
    """(dq, dk, dv) from what setup saved on ctx, through ``bwd`` (the custom op or the raw
    backend function); the trailing Nones are the non-tensor inputs' gradients."""
    q, k, v, o, lse, params, rank, seed = ctx.saved_tensors
    q_split, kind, scale, dropout_p, backend = ctx.args
    dq, dk, dv = bwd(dout.contiguous(), q, k, v, o, lse, params, rank, q_split, kind, scale,
                     dropout_p, seed, backend)
    return dq, dk, dv, None, None, None, None, None, None, None, None


def _backward(ctx, dout, dlse):
    return _grads(_attention_bwd, ctx, dout)


_attention_fwd.register_autograd(_backward, setup_context=_setup_context)


class _EagerAttention(torch.autograd.Function):
    """The same forward / backward as the custom ops above, for eager mode only. A
    ``torch.library`` custom op with autograd costs ~100 us of Python per fwd+bwd (schema
    default filling, redispatch), against ~7 us for the kernel launch at tiny shapes and a
    few ms per call at IWSLT-sized batches; under torch.compile (and for opcheck) the
    registered custom op is used instead, so graphs still see ``janus::attention_fwd``."""

    @staticmethod
    def forward(ctx, q, k, v, params, rank, q_split, kind, scale, dropout_p, seed, backend):
        inputs = (q, k, v, params, rank, q_split, kind, scale, dropout_p, seed, backend)
        out = _BACKENDS[backend][0](*inputs[:-1])
        _setup_context(ctx, inputs, out)
        ctx.mark_non_differentiable(out[1])
        return out

    @staticmethod
    def backward(ctx, dout, dlse):
        return _grads(lambda *a: _BACKENDS[a[-1]][1](*a[:-1]), ctx, dout)


# ========================================================================== public API
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


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: MaskDescriptor, *,
              scale: Optional[float] = None, dropout_p: float = 0.0,
              seed: Optional[int] = None, return_lse: bool = False,
              backend: Optional[str] = None):
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
        backend: "cpp", "triton" or "reference" (default: see ``default_backend``).

    Returns:
        out (B, H, Lq, d) in q's dtype (and lse). Rows that see no key (padding rows, the
        first query of a permutation) give zeros and lse = -inf, with zero gradients.
    """
    _check_inputs(q, k, v, mask, dropout_p)
    backend = backend or default_backend(q.device, q.dtype, q.shape[-1])
    if backend not in _BACKENDS:
        raise ValueError(f"attention: backend must be one of {sorted(_BACKENDS)}, got {backend!r}")
    scale = float(q.shape[-1] ** -0.5 if scale is None else scale)
    if not scale > 0:
        raise ValueError(f"attention: scale must be positive, got {scale}")
    seed_t = None
    if dropout_p > 0:
        if seed is None:
            seed = int(torch.randint(0, 2 ** 62, (1,)).item())
        seed_t = torch.tensor([seed], dtype=torch.int64)
    fn = _attention_fwd if torch.compiler.is_compiling() else _EagerAttention.apply
    o, lse = fn(q, k, v, mask.params, mask.rank, mask.q_split, int(mask.kind), scale,
                float(dropout_p), seed_t, backend)
    return (o, lse) if return_lse else o
