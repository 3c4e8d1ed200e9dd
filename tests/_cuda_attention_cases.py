"""The numeric runner shared by the CUDA attention tests: the emulated kernels
(test_cuda_emu.py) and the real ones on a GPU (test_cuda_gpu.py) run the cases of the one
attention table (_attention_cases.py) against the same dense references with the same
tolerance rule; also the score-modifier cases (MOD_CASES, run by the Triton suite too).

Tolerance (COMMON standards): the kernel's max error against the fp64 reference must be at
most 2x (outputs, lse) or 3x (gradients) the error of the same-precision dense reference
(the same formula evaluated in fp16/bf16), plus an fp32-resolution floor of 1e-5 x max(|ref|, 1)
for entries the half-precision reference happens to get exactly (e.g. dQ = 0 for rows with a
single key, where the kernel's fp32 dP - delta leaves a ~1e-7 residue).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import torch

from attention_utils import assert_within_rule, ref_outputs
from _attention_cases import CASES, DROPOUT_SEED, AttnCase, make_inputs

import janus_kernels as jk
from janus_kernels.dropout import dropout_keep_mask
from janus_kernels.masks import MaskDescriptor
from janus_kernels.reference import reference_attention

# fwd(q, k, v, mask, scale, dropout_p, seed) -> (out, lse);
# bwd(dout, q, k, v, out, lse, mask, scale, dropout_p, seed) -> (dq, dk, dv); CPU tensors in/out
FwdFn = Callable[..., tuple]
BwdFn = Callable[..., tuple]


def references(q, k, v, dout, allowed, scale, keep, p):
    """{'acc': fp64, 'same': input precision} -> (out, lse, dq, dk, dv)."""
    refs = {}
    for tag in ("acc", "same"):
        conv = (lambda t: t.double()) if tag == "acc" else (lambda t: t)
        qq, kk, vv = (conv(t).detach().requires_grad_() for t in (q, k, v))
        o, lse = reference_attention(qq, kk, vv, allowed, scale=scale, upcast=tag == "acc",
                                     keep=keep, dropout_p=p, return_lse=True)
        grads = torch.autograd.grad(o, (qq, kk, vv), conv(dout))
        refs[tag] = (o.detach(), lse.detach(), *grads)
    return refs


def check_close(name: str, got: torch.Tensor, acc: torch.Tensor, same: torch.Tensor,
                factor: float) -> None:
    """The project's 2x / 3x rule (attention_utils.assert_within_rule)."""
    floor = 1e-5 * max(acc[torch.isfinite(acc)].abs().max().item() if acc.numel() else 1.0, 1.0)
    assert_within_rule(name, got, acc, same, grad=factor > 2.0, floor=floor)


def run_case(fwd: FwdFn, bwd: BwdFn, case: AttnCase, dtype: torch.dtype) -> None:
    """Forward + backward of one case through (fwd, bwd), checked against the references."""
    mask = case.mask()
    q, k, v, dout = make_inputs(case, mask, dtype)
    q0, k0, v0, do0 = (t.clone() for t in (q, k, v, dout))
    scale = case.softmax_scale
    seed = DROPOUT_SEED if case.dropout else 0
    B, H, Lq, Lk = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    keep = dropout_keep_mask(seed, B, H, Lq, Lk, case.dropout) if case.dropout else None
    allowed = mask.materialize()

    out, lse = fwd(q, k, v, mask, scale, case.dropout, seed)
    dq, dk, dv = bwd(dout, q, k, v, out, lse, mask, scale, case.dropout, seed)
    for a, b0 in ((q, q0), (k, k0), (v, v0), (dout, do0)):
        assert torch.equal(a, b0), "inputs were modified"

    refs = references(q, k, v, dout, allowed, scale, keep, case.dropout)
    names = ("out", "lse", "dq", "dk", "dv")
    for i, (nm, got) in enumerate(zip(names, (out, lse, dq, dk, dv))):
        check_close(f"{case.name}/{dtype}/{nm}", got, refs["acc"][i], refs["same"][i],
                    2.0 if i < 2 else 3.0)

    # rows that see no key: exactly 0 / -inf / zero gradient; keys nobody sees: zero grads
    dead_rows = ~allowed.any(-1)                      # (B, Lq)
    assert (out.float().permute(0, 2, 1, 3)[dead_rows] == 0).all()
    assert (lse.permute(0, 2, 1)[dead_rows] == float("-inf")).all()
    assert (dq.float().permute(0, 2, 1, 3)[dead_rows] == 0).all()
    dead_keys = ~allowed.any(1)                       # (B, Lk)
    assert (dk.float().permute(0, 2, 1, 3)[dead_keys] == 0).all()
    assert (dv.float().permute(0, 2, 1, 3)[dead_keys] == 0).all()


def keep_mask_case():
    """(mask, B, H, d, p, seed, q, k, v) with V = identity: out[i, j] = P_ij keep_ij / (1-p),
    so the nonzero pattern of out[..., :Lk] is the keep-mask on the allowed entries."""
    mask = jk.janus_nar_mask([7, 20], [5, 9], 40, 9)
    B, H, d, p = 2, 3, 64, 0.3
    seed = (0xDEADBEEF << 32) | 0x01234567      # both Philox key words matter
    Lq, Lk = mask.q_len, mask.kv_len
    g = torch.Generator().manual_seed(1)
    q = (0.1 * torch.randn(B, H, Lq, d, generator=g)).half()
    k = (0.1 * torch.randn(B, H, Lk, d, generator=g)).half()
    v = torch.eye(Lk, d).half().expand(B, H, Lk, d).contiguous()
    expected = dropout_keep_mask(seed, B, H, Lq, Lk, p) & mask.materialize()[:, None]
    return mask, p, seed, q, k, v, expected


# ------------------------------------------------------------------ score modifiers
@dataclasses.dataclass
class ModCase:
    """A case with score modifiers: softcap (0 = off) and/or a random relative-bias table."""
    name: str
    mask: Callable[[], MaskDescriptor]
    softcap: float = 0.0
    rel_bias: bool = False
    H: int = 2
    Hkv: int = 2
    d: int = 64
    dropout: float = 0.0
    scale: Optional[float] = None
    bshd: bool = False
    q_gain: float = 3.0         # scores of a few units, so the softcap bends them

    @property
    def kv_heads(self) -> int:
        return self.Hkv


MOD_CASES = [
    # padding rows / keys, a sample with no query rows, GQA, both modifiers
    ModCase("janus_nar_both_gqa", CASES["janus_nar_d64"].mask, softcap=2.5, rel_bias=True,
            H=4, Hkv=2),
    # several 64-tiles with FULL tiles (keys past Lk in the last one), odd length
    ModCase("causal_113_softcap", lambda: jk.causal_mask([113, 70], 113), softcap=4.0, H=1,
            Hkv=1, d=32),
    ModCase("causal_113_rel", lambda: jk.causal_mask([113, 70], 113), rel_bias=True, H=1,
            Hkv=1, d=32),
    ModCase("full_7x70_both_d128", lambda: jk.full_mask(2, 7, 70), softcap=3.0, rel_bias=True,
            H=2, Hkv=1, d=128),
    # d = 128: the dK/dV kernel's 16-row query tiles (BwdCfg<128, true>) over several tiles
    ModCase("janus_nar_gqa_d128_both", CASES["janus_nar_gqa_d128"].mask, softcap=3.0,
            rel_bias=True, H=4, Hkv=2, d=128),
    ModCase("prefix_lm_dropout_both_bshd", CASES["prefix_lm_dropout"].mask, softcap=5.0,
            rel_bias=True, dropout=0.2, bshd=True),
    ModCase("permutation_rel", CASES["permutation_20"].mask, rel_bias=True, d=80),
]


def _dense_bias(rel: torch.Tensor, Lq: int, Lk: int) -> torch.Tensor:
    """(H, Lq, Lk) from the (H, Lq + Lk - 1) table: entry (i, j) = rel[:, j - i + Lq - 1]."""
    diag = torch.arange(Lk)[None, :] - torch.arange(Lq)[:, None] + (Lq - 1)
    return rel[:, diag]


def run_mods_case(fwd: FwdFn, bwd: BwdFn, case: ModCase, dtype: torch.dtype) -> None:
    """One case through fwd(q, k, v, mask, scale, p, seed, rel_bias, softcap) -> (out, lse) and
    bwd(dout, q, k, v, out, lse, mask, scale, p, seed, rel_bias, softcap) -> (dq, dk, dv,
    d_rel_bias), checked against the dense autograd references with the tolerance rule."""
    mask = case.mask()
    q, k, v, dout = make_inputs(case, mask, dtype)
    q = (q.float() * case.q_gain).to(dtype)
    B, H, Lq, Lk = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    rel = None
    if case.rel_bias:
        rel = torch.randn(H, Lq + Lk - 1, generator=torch.Generator().manual_seed(9))
    scale = case.scale if case.scale is not None else case.d ** -0.5
    seed = 0x0F1E_2D3C_4B5A_6978 if case.dropout else 0
    keep = dropout_keep_mask(seed, B, H, Lq, Lk, case.dropout) if case.dropout else None
    allowed = mask.materialize()
    before = [t.clone() for t in (q, k, v, dout) + ((rel,) if rel is not None else ())]

    out, lse = fwd(q, k, v, mask, scale, case.dropout, seed, rel, case.softcap)
    grads = bwd(dout, q, k, v, out, lse, mask, scale, case.dropout, seed, rel, case.softcap)
    after = (q, k, v, dout) + ((rel,) if rel is not None else ())
    assert all(torch.equal(a, b) for a, b in zip(after, before)), "inputs were modified"

    cap = case.softcap or None
    common = dict(scale=scale, keep=keep, dropout_p=case.dropout, softcap=cap)
    acc = ref_outputs(q.double(), k.double(), v.double(), dout.double(), allowed, upcast=True,
                      rel_bias=None if rel is None else rel.double(), **common)
    same = ref_outputs(q, k, v, dout, allowed, upcast=False,
                       rel_bias=None if rel is None else rel.to(dtype), **common)
    names = ("out", "dq", "dk", "dv", "d_rel_bias")
    got = (out,) + tuple(grads[:3]) + ((grads[3],) if rel is not None else ())
    for i, (nm, g) in enumerate(zip(names, got)):
        check_close(f"{case.name}/{dtype}/{nm}", g, acc[i], same[i], 2.0 if i == 0 else 3.0)

    bias = None if rel is None else _dense_bias(rel.double(), Lq, Lk)
    _, lse_acc = reference_attention(q.double(), k.double(), v.double(), allowed, scale=scale,
                                     softcap=cap, bias=bias, return_lse=True)
    _, lse_same = reference_attention(q, k, v, allowed, scale=scale, upcast=False, softcap=cap,
                                      bias=None if bias is None else bias.to(dtype),
                                      return_lse=True)
    check_close(f"{case.name}/{dtype}/lse", lse, lse_acc, lse_same, 2.0)
