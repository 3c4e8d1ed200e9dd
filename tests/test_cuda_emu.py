"""The CUDA attention kernels (csrc/cuda/attention_{fwd,bwd}.cu, compiled UNCHANGED by g++
against the CPU emulation in csrc/cuda_emu/) run through their raw launchers (ctypes) on the
cases of the one attention table (_attention_cases.py, the SMALL ones: the emulation pays per
emulated thread) with the shared runner (_cuda_attention_cases.py: dense fp64 /
same-precision references and the COMMON tolerance rule), under several schedules of the
emulated threads.

Also: the emulator itself (mma/ldmatrix fragment tables against an independent Python model
of the PTX ISA tables, shuffles, cp.async timing, atomics, deadlock and shared-memory checks).
"""
from __future__ import annotations

import ctypes
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import _cuda_emu_lib as emu_lib
import janus_kernels as jk
from _attention_cases import SLOW_SIZES, params
from _cuda_attention_cases import MOD_CASES, keep_mask_case, run_case, run_mods_case

pytestmark = pytest.mark.skipif(
    shutil.which(os.environ.get("CXX", "g++")) is None or emu_lib.cuda_include_dir() is None,
    reason="needs g++ and the CUDA headers (toolkit or nvidia-cuda-runtime wheels)")

SELFTEST_SRC = Path(__file__).parent / "cuda_emu" / "emu_selftest.cu"


@pytest.fixture(scope="module")
def kern() -> emu_lib.EmuKernels:
    k = emu_lib.EmuKernels(emu_lib.build())
    yield k
    k.configure(-1, -1, 0, -1)


@pytest.fixture(scope="module")
def selftest():
    lib = ctypes.CDLL(str(emu_lib.build(sources=[SELFTEST_SRC], name="janus_emu_selftest")))
    lib.janus_emu_last_message.restype = ctypes.c_char_p
    P, I = ctypes.c_void_p, ctypes.c_int
    for name, args in (("selftest_mma", [P, P, P, P, I]), ("selftest_ldmatrix", [P, P, P, I]),
                       ("selftest_shuffle", [P, P]), ("selftest_cp_async", [P, P, P]),
                       ("selftest_atomics", [I, I, P, P]), ("selftest_deadlock", [I, P]),
                       ("selftest_big_smem", [I, P])):
        getattr(lib, name).argtypes = args
    return lib


def _ptr(t: torch.Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


def _run_emulated(kern, case, dtype, order: int, cp_eager: int):
    kern.configure(order=order, workers=2, cp_eager=cp_eager)
    run_case(lambda q, k, v, m, s, p, seed: kern.fwd(q, k, v, m, scale=s, dropout_p=p, seed=seed),
             lambda do, q, k, v, o, lse, m, s, p, seed: kern.bwd(do, q, k, v, o, lse, m, scale=s,
                                                                  dropout_p=p, seed=seed),
             case, dtype)


# Two schedules of the emulated threads (see csrc/cuda_emu/cuda_emu.h): warps run ahead in
# thread order with cp.async landing at wait_group (catches missing waits and barriers before
# reads), and in reverse order with cp.async landing at issue (catches missing barriers
# before a buffer is refilled).
SCHEDULES = {"fwd_lazy": (0, 0), "rev_eager": (1, 1)}


@pytest.mark.parametrize("sched", list(SCHEDULES))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("case", params("cuda", SLOW_SIZES))
def test_attention_matches_reference(kern, case, dtype, sched):
    _run_emulated(kern, case, dtype, *SCHEDULES[sched])


def _emu_fwd_mods(kern):
    return lambda q, k, v, m, s, p, seed, rel, cap: kern.fwd(
        q, k, v, m, scale=s, dropout_p=p, seed=seed, rel_bias=rel, softcap=cap)


def _emu_bwd_mods(kern):
    def bwd(do, q, k, v, o, lse, m, s, p, seed, rel, cap):
        d_rel = torch.zeros(rel.shape if rel is not None else (0,), dtype=torch.float32)
        grads = kern.bwd(do, q, k, v, o, lse, m, scale=s, dropout_p=p, seed=seed, rel_bias=rel,
                         softcap=cap, d_rel_bias=d_rel if rel is not None else None)
        return grads + (d_rel,)
    return bwd


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("case", MOD_CASES, ids=[c.name for c in MOD_CASES])
def test_attention_with_score_mods(kern, case, dtype):
    """softcap / rel_bias (attention_score_mods.cuh) against the dense autograd reference."""
    kern.configure(order=1, workers=2, cp_eager=1)
    run_mods_case(_emu_fwd_mods(kern), _emu_bwd_mods(kern), case, dtype)


def test_launcher_rejects_bad_score_mods(kern):
    mask = jk.causal_mask([6], 6)
    q = torch.randn(1, 2, 6, 64).half()
    for cap in (-1.0, float("nan"), float("inf")):
        with pytest.raises(emu_lib.EmuError, match="cudaError 1"):
            kern.fwd(q, q, q, mask, scale=1.0, softcap=cap)
    with pytest.raises(emu_lib.EmuError, match="cudaError 1"):    # rel_len != Lq + Lk - 1
        kern.fwd(q, q, q, mask, scale=1.0, rel_bias=torch.zeros(2, 10))
    rel = torch.zeros(2, 11)
    out, lse = kern.fwd(q, q, q, mask, scale=1.0, rel_bias=rel)
    with pytest.raises(emu_lib.EmuError, match="cudaError 1"):    # no d_rel_bias buffer
        kern.bwd(q, q, q, q, out, lse, mask, scale=1.0, rel_bias=rel)


@pytest.mark.parametrize("cp_eager", [0, 1])
@pytest.mark.parametrize("case", params("cuda", SLOW_SIZES, names=(
    "janus_nar_d64", "causal_113", "permutation_key_start")))
def test_attention_random_thread_order(kern, case, cp_eager):
    _run_emulated(kern, case, torch.bfloat16, order=2, cp_eager=cp_eager)


def test_dropout_keep_mask_is_identical(kern):
    """V = identity makes out[i, j] = P_ij * keep_ij / (1 - p): its nonzero pattern must be the
    Python keep-mask (janus_kernels.dropout) on the allowed entries, bit for bit."""
    kern.configure(order=0, workers=2, cp_eager=0)
    mask, p, seed, q, k, v, expected = keep_mask_case()
    out, _ = kern.fwd(q, k, v, mask, scale=q.shape[-1] ** -0.5, dropout_p=p, seed=seed)
    assert torch.equal(out[..., :k.shape[2]] != 0, expected)
    frac = expected.sum() / mask.materialize()[:, None].expand_as(expected).sum()
    assert 0.6 < frac < 0.8


def test_launcher_rejects_bad_arguments(kern):
    mask = jk.causal_mask([8], 8)
    q = torch.randn(1, 2, 8, 64).half()
    with pytest.raises(emu_lib.EmuError, match="cudaError 1"):      # head_dim 12: not % 8
        kern.fwd(q[..., :12].contiguous(), q[..., :12].contiguous(), q[..., :12].contiguous(),
                 mask, scale=1.0)
    with pytest.raises(emu_lib.EmuError, match="cudaError 1"):      # H % Hkv != 0
        kv3 = q[:, :1].expand(1, 3, 8, 64).contiguous()
        kern.fwd(q, kv3, kv3, mask, scale=1.0)


# ============================================================================ the emulator
def _halves_to_u32(h: np.ndarray) -> np.ndarray:
    """(..., 2) uint16 -> (...) uint32, element 0 in the low half."""
    return h[..., 0].astype(np.uint32) | (h[..., 1].astype(np.uint32) << 16)


def _ptx_mma_model(a_regs, b_regs, c, to_float):
    """D = A B + C per lane, from the PTX ISA fragment tables for mma.m16n8k16 (.f16/.bf16),
    written element-wise as in the ISA text: a_i (i = 0..7) sits at row groupID (+8 for
    i in {2,3,6,7}), col 2*tig + (i & 1) (+8 for i >= 4); b_i (i = 0..3) at row 2*tig + (i & 1)
    (+8 for i >= 2), col groupID; c_i at row groupID (+8 for i >= 2), col 2*tig + (i & 1)."""
    A = np.zeros((16, 16))
    Bm = np.zeros((16, 8))
    C = np.zeros((16, 8))
    for lane in range(32):
        gid, tig = lane // 4, lane % 4
        a_el = [(a_regs[lane, i // 2] >> (16 * (i % 2))) & 0xFFFF for i in range(8)]
        b_el = [(b_regs[lane, i // 2] >> (16 * (i % 2))) & 0xFFFF for i in range(4)]
        for i in range(8):
            row = gid + (8 if i in (2, 3, 6, 7) else 0)
            col = 2 * tig + (i & 1) + (8 if i >= 4 else 0)
            A[row, col] = to_float(a_el[i])
        for i in range(4):
            Bm[2 * tig + (i & 1) + (8 if i >= 2 else 0), gid] = to_float(b_el[i])
        for i in range(4):
            C[gid + (8 if i >= 2 else 0), 2 * tig + (i & 1)] = c[lane, i]
    D = A @ Bm + C
    out = np.zeros((32, 4))
    for lane in range(32):
        gid, tig = lane // 4, lane % 4
        for i in range(4):
            out[lane, i] = D[gid + (8 if i >= 2 else 0), 2 * tig + (i & 1)]
    return out


@pytest.mark.parametrize("bf16", [0, 1], ids=["f16", "bf16"])
def test_emu_mma_fragment_layout(selftest, bf16):
    rng = np.random.default_rng(bf16)
    vals = rng.integers(-8, 9, size=(32, 6, 2)).astype(np.float32) / 4   # exact in both types
    tdt = torch.bfloat16 if bf16 else torch.float16
    bits = torch.from_numpy(vals).to(tdt).view(torch.int16).numpy().view(np.uint16)
    a = np.ascontiguousarray(_halves_to_u32(bits[:, :4]))
    b = np.ascontiguousarray(_halves_to_u32(bits[:, 4:]))
    c = rng.standard_normal((32, 4)).astype(np.float32)
    d = np.full((32, 4), np.nan, dtype=np.float32)
    rc = selftest.selftest_mma(a.ctypes.data, b.ctypes.data, c.ctypes.data, d.ctypes.data, bf16)
    assert rc == 0
    to_float = lambda u: float(torch.tensor([u], dtype=torch.int32).to(torch.int16)  # noqa: E731
                               .view(tdt).float())
    expected = _ptx_mma_model(a, b, c, to_float)
    np.testing.assert_allclose(d, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("trans", [0, 1])
def test_emu_ldmatrix_layout(selftest, trans):
    rng = np.random.default_rng(trans)
    src = rng.integers(0, 65536, size=(32, 8)).astype(np.uint16)   # row r = matrix r//8, row r%8
    perm = rng.permutation(32).astype(np.int32)                      # lane l passes row perm[l]
    out = np.zeros((32, 4), dtype=np.uint32)
    rc = selftest.selftest_ldmatrix(src.ctypes.data, perm.ctypes.data, out.ctypes.data, trans)
    assert rc == 0
    mats = src[perm].reshape(4, 8, 8)          # matrix m row r = the row lane 8m + r passed
    exp = np.zeros((32, 4), dtype=np.uint32)
    for lane in range(32):
        for m in range(4):
            if trans:
                pair = mats[m, 2 * (lane % 4):2 * (lane % 4) + 2, lane // 4]
            else:
                pair = mats[m, lane // 4, 2 * (lane % 4):2 * (lane % 4) + 2]
            exp[lane, m] = int(pair[0]) | (int(pair[1]) << 16)
    np.testing.assert_array_equal(out, exp)


def test_emu_shuffles(selftest):
    vals = np.arange(64, dtype=np.int32) * 3 + 1
    out = np.zeros((64, 6), dtype=np.int32)
    assert selftest.selftest_shuffle(vals.ctypes.data, out.ctypes.data) == 0
    for t in range(64):
        lane, base = t % 32, t - t % 32
        assert out[t, 0] == vals[base + (lane ^ 5)]
        assert out[t, 1] == vals[t + 3 if lane + 3 < 32 else t]
        assert out[t, 2] == vals[t - 2 if lane >= 2 else t]
        assert out[t, 3] == vals[base + (lane & ~15) + 7]
        ballot = sum(1 << la for la in range(32) if vals[base + la] & 1)
        assert out[t, 4] == np.int32(np.uint32(ballot))
        assert out[t, 5] == 1        # none > 1000, all >= 0


def test_emu_cp_async_lands_only_at_wait(selftest):
    src = torch.arange(128, dtype=torch.float32) + 1
    before = torch.zeros(128)
    after = torch.zeros(128)
    assert selftest.selftest_cp_async(_ptr(src), _ptr(before), _ptr(after)) == 0
    assert torch.isnan(before).all()           # poisoned dynamic shared memory, copy queued
    exp = src.clone()
    exp[126:] = 0                              # the last thread copied 8 of 16 bytes
    assert torch.equal(after, exp)


def test_emu_atomics_across_blocks(selftest):
    total = torch.zeros(1)
    imax = torch.zeros(1, dtype=torch.int32)
    assert selftest.selftest_atomics(64, 128, _ptr(total), _ptr(imax)) == 0
    assert total.item() == 64 * 128 and imax.item() == 63


@pytest.mark.parametrize("kind,msg", [(0, "different __syncthreads"), (1, "deadlock")])
def test_emu_reports_deadlock(selftest, kind, msg):
    out = torch.zeros(64, dtype=torch.int32)
    assert selftest.selftest_deadlock(kind, _ptr(out)) != 0
    assert msg in selftest.janus_emu_last_message().decode()


def test_emu_checks_dynamic_smem_opt_in(selftest):
    out = torch.zeros(32)
    assert selftest.selftest_big_smem(0, _ptr(out)) != 0
    assert "cudaFuncSetAttribute" in selftest.janus_emu_last_message().decode()
    assert selftest.selftest_big_smem(1, _ptr(out)) == 0 and (out == 1).all()
