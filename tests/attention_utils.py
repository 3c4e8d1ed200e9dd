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


def ref_outputs(q, k, v, do, allowed, *, upcast: bool, scale=None, keep=None, dropout_p=0.0,
                softcap=None, rel_bias=None):
    """Output and grads of the dense eager reference, through torch autograd (independent of
    any hand-written backward). upcast=True with fp64 inputs is the accurate reference.
    With a relative-bias table (score modifiers) its gradient comes last."""
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    bias = None
    if rel_bias is not None:
        leaves.append(rel_bias.detach().clone().requires_grad_())
        Lq, Lk = q.shape[2], k.shape[2]
        diag = torch.arange(Lk)[None, :] - torch.arange(Lq)[:, None] + (Lq - 1)
        bias = leaves[3][:, diag]          # (H, Lq, Lk), a gather: autograd sums per diagonal
    o = reference_attention(*leaves[:3], allowed, scale=scale, upcast=upcast, keep=keep,
                            dropout_p=dropout_p, softcap=softcap, bias=bias)
    grads = torch.autograd.grad(o, leaves, do.to(o.dtype), allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, leaves)]
    return [o.detach()] + list(grads)


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def assert_within_rule(name: str, got: torch.Tensor, exact: torch.Tensor, same: torch.Tensor,
                       *, grad: bool, floor: float) -> None:
    """The project's tolerance rule, written once for every backend's suite: against the float64
    reference `exact`, the error may be at most 2x (outputs) or 3x (gradients) the error of the
    same reference computed in the input precision (`same`), plus `floor` (the rounding of one
    result to the input dtype). Non-finite entries (lse = -inf of rows that see no key) must
    sit exactly where the reference has them; NaN is never allowed."""
    got, exact, same = (t.detach().double().cpu() for t in (got, exact, same))
    assert got.shape == exact.shape, f"{name}: shape {tuple(got.shape)} != {tuple(exact.shape)}"
    assert not torch.isnan(got).any(), f"{name}: NaN (unwritten or poisoned entries)"
    fin = torch.isfinite(exact)
    assert torch.equal(torch.isfinite(got), fin), f"{name}: non-finite pattern differs"
    assert torch.equal(got[~fin], exact[~fin]), f"{name}: wrong infinities"
    if not fin.any():
        return
    err = (got - exact)[fin].abs().max().item()
    ref_err = (same - exact)[fin].abs().max().item()
    factor = 3.0 if grad else 2.0
    assert err <= factor * ref_err + floor, (
        f"{name}: kernel error {err:.3e} > {factor}x reference error {ref_err:.3e} + {floor:.1e}")


def assert_close_to_reference(ours: Sequence[torch.Tensor], q, k, v, do, allowed, *,
                              scale=None, keep=None, dropout_p=0.0, names=("out", "dq", "dk", "dv"),
                              floor: Optional[float] = None) -> None:
    """ours = [out, dq, dk, dv] in the input dtype, against fp64 and same-precision references
    by ``assert_within_rule``; the default floor covers the rounding of a single result to the
    input dtype."""
    exact = ref_outputs(q.double(), k.double(), v.double(), do.double(), allowed, upcast=True,
                        scale=scale, keep=keep, dropout_p=dropout_p)
    same = ref_outputs(q, k, v, do, allowed, upcast=False, scale=scale, keep=keep,
                       dropout_p=dropout_p)
    eps = torch.finfo(q.dtype).eps
    for idx, (name, a, e, s) in enumerate(zip(names, ours, exact, same)):
        assert a.dtype == q.dtype, (name, a.dtype)
        assert torch.isfinite(a).all(), f"{name}: non-finite values"
        fl = floor if floor is not None else 8 * eps * max(e.abs().max().item(), 1.0)
        assert_within_rule(name, a, e, s, grad=idx > 0, floor=fl)

