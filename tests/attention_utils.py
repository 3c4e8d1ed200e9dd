"""Shared helpers for attention tests: random inputs for a descriptor and the tolerance rule
(kernel error <= 2x the same-precision reference's own error for outputs, 3x for grads)."""
from typing import Optional, Sequence

import torch

from janus_kernels.reference import reference_attention


def make_qkv(desc, H: int = 2, Hkv: Optional[int] = None, d: int = 32,
             dtype=torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    Hkv = Hkv or H
    B = desc.batch_size
    q = torch.randn(B, H, desc.q_len, d, generator=g).to(dtype)
    k = torch.randn(B, Hkv, desc.kv_len, d, generator=g).to(dtype)
    v = torch.randn(B, Hkv, desc.kv_len, d, generator=g).to(dtype)
    do = torch.randn(B, H, desc.q_len, d, generator=g).to(dtype)
    return q, k, v, do


def ref_outputs(q, k, v, do, allowed, *, upcast: bool, scale=None, keep=None, dropout_p=0.0):
    """Output and grads of the dense eager reference, through torch autograd (independent of
    any hand-written backward). upcast=True with fp64 inputs is the accurate reference."""
    qr, kr, vr = (t.detach().clone().requires_grad_() for t in (q, k, v))
    o = reference_attention(qr, kr, vr, allowed, scale=scale, upcast=upcast, keep=keep,
                            dropout_p=dropout_p)
    grads = torch.autograd.grad(o, (qr, kr, vr), do.to(o.dtype), allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, (qr, kr, vr))]
    return [o.detach()] + list(grads)


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def assert_close_to_reference(ours: Sequence[torch.Tensor], q, k, v, do, allowed, *,
                              scale=None, keep=None, dropout_p=0.0, names=("out", "dq", "dk", "dv"),
                              floor: Optional[float] = None) -> None:
    """ours = [out, dq, dk, dv] in the input dtype. Compare with an fp64 reference; the
    allowance is 2x (out) / 3x (grads) the same-precision reference's error, plus a floor
    that covers the rounding of a single result to the input dtype."""
    exact = ref_outputs(q.double(), k.double(), v.double(), do.double(), allowed, upcast=True,
                        scale=scale, keep=keep, dropout_p=dropout_p)
    same = ref_outputs(q, k, v, do, allowed, upcast=False, scale=scale, keep=keep,
                       dropout_p=dropout_p)
    eps = torch.finfo(q.dtype).eps
    for idx, (name, a, e, s) in enumerate(zip(names, ours, exact, same)):
        assert a.shape == e.shape, (name, a.shape, e.shape)
        assert a.dtype == q.dtype, (name, a.dtype)
        assert torch.isfinite(a).all(), f"{name}: non-finite values"
        factor = 2.0 if idx == 0 else 3.0
        scale_mag = max(e.abs().max().item(), 1.0)
        fl = floor if floor is not None else 8 * eps * scale_mag
        ref_err = max_err(s, e)
        err = max_err(a, e)
        assert err <= factor * ref_err + fl, \
            f"{name}: kernel error {err:.3e} > {factor}x reference error {ref_err:.3e} + {fl:.1e}"
