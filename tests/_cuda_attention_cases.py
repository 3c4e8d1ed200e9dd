"""The numeric suite shared by the CUDA attention tests: the emulated kernels
(test_cuda_emu.py) and the real ones on a GPU (test_cuda_gpu.py) run the same cases against
the same dense references with the same tolerance rule.

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

from attention_utils import assert_within_rule
from _mask_cases_hf import HF_CASES

import janus_kernels as jk
from janus_kernels.dropout import dropout_keep_mask
from janus_kernels.masks import MaskDescriptor
from janus_kernels.reference import reference_attention

# fwd(q, k, v, mask, scale, dropout_p, seed) -> (out, lse);
# bwd(dout, q, k, v, out, lse, mask, scale, dropout_p, seed) -> (dq, dk, dv); CPU tensors in/out
FwdFn = Callable[..., tuple]
BwdFn = Callable[..., tuple]


@dataclasses.dataclass
class Case:
    name: str
    mask: Callable[[], MaskDescriptor]
    H: int = 2
    Hkv: int = 2
    d: int = 64
    dropout: float = 0.0
    scale: Optional[float] = None
    bshd: bool = False          # q/k/v/dout as (B, L, H, d) transposed: non-contiguous strides


def _perm_mask() -> MaskDescriptor:
    g = torch.Generator().manual_seed(3)
    rank = torch.stack([torch.randperm(20, generator=g) for _ in range(2)]).int()
    return jk.permutation_mask(rank, [20, 13])


CASES = [
    # JANUS NAR/AUX: padding rows and keys, M = 0 (no query rows, no window) in sample 1
    Case("janus_nar", lambda: jk.janus_nar_mask([5, 9, 3], [3, 0, 2], 20, 5)),
    Case("janus_nar_gqa_d128", lambda: jk.janus_nar_mask([6, 2], [4, 1], 24, 6), H=4, Hkv=2, d=128),
    Case("janus_nar_dropout", lambda: jk.janus_nar_mask([5, 9], [3, 2], 20, 5), dropout=0.25),
    Case("janus_ar", lambda: jk.janus_ar_mask([10, 6], 12), H=2, Hkv=1),
    # causal over several 64-tiles: FULL tiles (no predicate), dead tiles skipped, L = 113
    Case("causal_113", lambda: jk.causal_mask([113], 113), H=1, Hkv=1),
    Case("causal_7_bshd", lambda: jk.causal_mask([7, 5], 7), bshd=True, scale=0.3),
    Case("sliding_window_d32", lambda: jk.sliding_window_mask([70, 40], 9, 70), H=1, Hkv=1, d=32),
    Case("key_padding_d80", lambda: jk.key_padding_mask([13, 1], 9, 16), d=80),
    Case("prefix_lm_dropout", lambda: jk.prefix_lm_mask([4, 0], [30, 17], 30), dropout=0.1, H=4,
         Hkv=1),
    Case("len1", lambda: jk.causal_mask([1], 1), H=1, Hkv=1),
    Case("full", lambda: jk.full_mask(1, 40, 33), H=2, Hkv=1),
    Case("permutation", _perm_mask),
    # issue 14: KEY_START (left padding, decode, chunked prefill) and DOCUMENTS (packed
    # sequences, chunked attention); hand-built: a prefix above KEY_START, permutation + KEY_START
    *(Case(name, HF_CASES[name], H=1, Hkv=1, d=32) for name in (
        "hf_left_pad_113", "hf_decode", "hf_chunked_prefill", "hf_sliding",
        "hf_chunked_attention", "documents_causal", "documents_bidirectional",
        "key_start_prefix", "documents_prefix", "permutation_key_start")),
]


def _janus_nar_b8_n512() -> MaskDescriptor:
    g = torch.Generator().manual_seed(5)
    n = torch.randint(256, 513, (8,), generator=g)
    m = (0.55 * n).long()
    return jk.janus_nar_mask(n + 2 - m, m)


def _perm_mask_1024() -> MaskDescriptor:
    g = torch.Generator().manual_seed(4)
    rank = torch.stack([torch.randperm(1024, generator=g) for _ in range(2)]).int()
    return jk.permutation_mask(rank, [1024, 1000])


#: Real sizes for a GPU (test_cuda_gpu.py): long key-tile loops, many row blocks, GQA with
#: dropout at the JANUS NAR shape, the model's transposed layout (the emulation runs CASES).
GPU_CASES = [
    Case("causal_2048", lambda: jk.causal_mask([2048, 1777], 2048), H=2, Hkv=1),
    Case("janus_nar_B8_N512_d128_dropout", _janus_nar_b8_n512, H=4, Hkv=2, d=128, dropout=0.1),
    Case("sliding_1500_bshd", lambda: jk.sliding_window_mask([1500, 1100], 200, 1500),
         bshd=True),
    Case("permutation_1024", _perm_mask_1024),
    # issue 14 at real sizes: left-padded prefill and packed documents (many doc boundaries)
    Case("hf_left_pad_2048", lambda: jk.hf_mask(
        torch.arange(2048)[None, :].expand(2, 2048).ge(torch.tensor([[300], [0]])).long(),
        2048, 2048), H=2, Hkv=1),
    Case("documents_causal_2048", lambda: jk.document_mask(
        (torch.arange(2048) // 333)[None, :].expand(2, 2048), causal=True), bshd=True),
]


def make_inputs(case: Case, mask: MaskDescriptor, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    B, Lq, Lk = mask.batch_size, mask.q_len, mask.kv_len

    def make(h, L):
        if case.bshd:
            return torch.randn(B, L, h, case.d, generator=g).to(dtype).transpose(1, 2)
        return torch.randn(B, h, L, case.d, generator=g).to(dtype)

    return make(case.H, Lq), make(case.Hkv, Lk), make(case.Hkv, Lk), make(case.H, Lq)


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


def run_case(fwd: FwdFn, bwd: BwdFn, case: Case, dtype: torch.dtype) -> None:
    """Forward + backward of one case through (fwd, bwd), checked against the references."""
    mask = case.mask()
    q, k, v, dout = make_inputs(case, mask, dtype)
    q0, k0, v0, do0 = (t.clone() for t in (q, k, v, dout))
    scale = case.scale if case.scale is not None else case.d ** -0.5
    seed = 0x1234_5678_9ABC_DEF0 if case.dropout else 0
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
