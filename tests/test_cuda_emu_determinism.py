"""Bitwise determinism of the CUDA attention backward (csrc/cuda/attention_bwd.cu) under the
CPU emulation: gradients must not depend on the order in which blocks run or threads
interleave (`torch.use_deterministic_algorithms`, exact training resume). The emulation runs
the blocks one at a time in ascending or descending order and the threads in forward or
reverse order, so any cross-block fp32 accumulation (atomicAdd) changes the bits."""
from __future__ import annotations

import os
import shutil

import pytest
import torch

import _cuda_emu_lib as emu_lib
import janus_kernels as jk

pytestmark = pytest.mark.skipif(
    shutil.which(os.environ.get("CXX", "g++")) is None or emu_lib.cuda_include_dir() is None,
    reason="needs g++ and the CUDA headers (toolkit or nvidia-cuda-runtime wheels)")

# (thread order, cp.async eager, block order): two schedules that differ in every respect
SCHEDULES = [(0, 0, 0), (1, 1, 1)]

CASES = {
    # several key tiles of 64 feed every query row: cross-tile accumulation of dQ
    "causal_320": (lambda: jk.causal_mask([320, 250], 320), 1, 1, 64, 0.0),
    "janus_nar_gqa_dropout": (lambda: jk.janus_nar_mask([40, 90], [30, 20], 130, 40), 4, 2,
                              128, 0.2),
    "permutation": (lambda: jk.permutation_mask(
        torch.stack([torch.randperm(150, generator=torch.Generator().manual_seed(b))
                     for b in range(2)]).int(), [150, 97]), 2, 2, 64, 0.0),
}


@pytest.fixture(scope="module")
def kern() -> emu_lib.EmuKernels:
    k = emu_lib.EmuKernels(emu_lib.build())
    yield k
    k.configure(-1, -1, 0, -1, -1)


@pytest.mark.parametrize("name", list(CASES))
def test_backward_is_bitwise_deterministic(kern, name):
    make_mask, H, Hkv, d, p = CASES[name]
    mask = make_mask()
    B, Lq, Lk = mask.params.shape[0], mask.q_len, mask.kv_len
    g = torch.Generator().manual_seed(1)
    q = torch.randn(B, H, Lq, d, generator=g).half()
    k = torch.randn(B, Hkv, Lk, d, generator=g).half()
    v = torch.randn(B, Hkv, Lk, d, generator=g).half()
    dout = torch.randn(B, H, Lq, d, generator=g).half()
    scale = d ** -0.5
    runs = []
    for order, cp_eager, block_order in SCHEDULES:
        kern.configure(order=order, workers=1, cp_eager=cp_eager, block_order=block_order)
        out, lse = kern.fwd(q, k, v, mask, scale=scale, dropout_p=p, seed=7)
        runs.append((out, lse) + kern.bwd(dout, q, k, v, out, lse, mask, scale=scale,
                                          dropout_p=p, seed=7))
    for name_t, a, b in zip(("out", "lse", "dq", "dk", "dv"), *runs):
        bits = torch.int16 if a.dtype == torch.float16 else torch.int32
        differ = (a.view(bits) != b.view(bits)).sum().item()
        assert differ == 0, f"{name_t}: {differ} elements differ between the two schedules"
