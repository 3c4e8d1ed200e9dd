"""Triton residual dropout (janus_kernels/triton/dropout.py): the same bits as the reference
and the CPU kernels (under TRITON_INTERPRET=1 on CPU, or on a GPU), the documented Philox
stream, the backward, and an AOT compile for sm_80 / sm_90 without register spills."""
import os

import pytest
import torch

pytest.importorskip("triton")

import janus_kernels as jk  # noqa: E402
from _triton_aot_utils import run_aot_script  # noqa: E402
from test_dropout_add import DTYPES, keep_oracle  # noqa: E402

INTERP = os.environ.get("TRITON_INTERPRET") == "1"
needs_interp = pytest.mark.skipif(not INTERP and not torch.cuda.is_available(),
                                  reason="needs TRITON_INTERPRET=1 or a GPU")
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy in the interpreter
DEV = "cuda" if torch.cuda.is_available() and not INTERP else "cpu"


@needs_interp
@pytest.mark.parametrize("n", [1, 7, 64, 113, 1031])
def test_triton_mask_is_the_documented_stream(n):
    p, seed = 0.3, -(2 ** 40) - 3
    out = jk.dropout_add(torch.ones(n, device=DEV), None, p, seed=seed, backend="triton")
    assert torch.equal((out != 0).cpu(), keep_oracle(n, p, seed))


@needs_interp
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(0,), (7,), (113, 5), (3, 1031)], ids=str)
def test_triton_equals_the_reference_forward_and_backward(dtype, shape):
    g = torch.Generator().manual_seed(4)
    y = torch.randn(shape, generator=g).to(dtype)
    r = torch.randn(shape, generator=g).to(dtype)
    grad = torch.randn(shape, generator=g).to(dtype)
    for seed in (5, -7, 2 ** 63 - 1):
        outs = {}
        for be, dev in (("triton", DEV), ("reference", "cpu")):
            yl = y.to(dev).requires_grad_(True)
            rl = r.to(dev).requires_grad_(True)
            out = jk.dropout_add(yl, rl, 0.37, seed=seed, backend=be)
            out.backward(grad.to(dev))
            outs[be] = [t.cpu() for t in (out.detach(), yl.grad, rl.grad)]
        for a, b in zip(outs["triton"], outs["reference"]):
            assert torch.equal(a, b)


@needs_interp
def test_triton_serves_dropout_add():
    assert jk.backends.why_not("dropout_add", "triton", DEV, torch.float32) is None


_AOT_SCRIPT = r"""
import json, os
os.environ["TRITON_INTERPRET"] = "0"
import triton
from triton.compiler import ASTSource
from triton.backends.compiler import GPUTarget
from janus_kernels.triton import dropout as D
from janus_kernels.triton.aot import resource_usage

res = []
for dt in ("fp32", "bf16", "fp16", "fp64"):
    for has_res in (True, False):
        sig = {"Y": "*" + dt, "R": "*" + dt, "O": "*" + dt, "n": "i64", "thr": "i64",
               "seed": "i64", "SCALE": "*" + ("fp64" if dt == "fp64" else "fp32"),
               "HAS_RES": "constexpr", "IS_F64": "constexpr", "K": "constexpr"}
        const = {"HAS_RES": has_res, "IS_F64": dt == "fp64", "K": D._K}
        for arch in (80, 90):
            k = triton.compile(ASTSource(fn=D.KERNELS["dropout_add"], signature=sig,
                                         constexprs=const),
                               target=GPUTarget("cuda", arch, 32),
                               options={"num_warps": 4, "enable_fp_fusion": False})
            res.append(dict(kernel="dropout_add", dtype=dt, arch=arch,
                            **resource_usage(k.asm["cubin"])))
print("RESULT" + json.dumps(res))
"""


@pytest.mark.compile_check
def test_triton_dropout_aot_compiles_without_spills():
    run_aot_script(_AOT_SCRIPT, expected_rows=16)
