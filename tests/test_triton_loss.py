"""Triton loss kernels (janus_kernels/triton/loss.py): numerics under TRITON_INTERPRET=1 on CPU
(small shapes; block sizes shrunk so the online loops run several iterations), and an AOT
compile for sm_80 / sm_90 in a subprocess checking registers and spills (compile_check)."""
import math
import os

import pytest
import torch

pytest.importorskip("triton")

from janus_kernels import losses as L  # noqa: E402
from _triton_aot_utils import run_aot_script  # noqa: E402
from test_losses import ce_oracle, check, kl_oracle, oracle_grads  # noqa: E402
from _loss_cases import (CE_CASES, CPU_SIZES, KL_CASES, LABEL_SMOOTHING,  # noqa: E402
                         SLOW_SIZES, params, skip_unless_affordable)

INTERP = os.environ.get("TRITON_INTERPRET") == "1"
needs_interp = pytest.mark.skipif(not INTERP and not torch.cuda.is_available(),
                                  reason="needs TRITON_INTERPRET=1 or a GPU")
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy in the interpreter
DEV = "cuda" if torch.cuda.is_available() and not INTERP else "cpu"
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
#: the loss table's size classes: the interpreter takes the SMALL cases, a GPU all of them
SIZES = SLOW_SIZES if DEV == "cpu" else CPU_SIZES


@pytest.fixture
def small_blocks(monkeypatch):
    from janus_kernels.triton import loss as tri
    monkeypatch.setattr(tri, "_FWD_BLOCK", 512)
    monkeypatch.setattr(tri, "_BWD_BLOCK", 256)


def _on(t):
    return t.to(DEV)


@needs_interp
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", params(KL_CASES, SIZES))
def test_triton_symmetric_kl(small_blocks, dtype, case):
    skip_unless_affordable(case, dtype)
    R, V, T = case.R, case.V, case.T
    x = (torch.randn(R, V) * 3).to(dtype)
    y = (torch.randn(R, V) * 3 - 1).to(dtype)
    if R:
        x[0, :V // 2] += 8.0  # the running max grows across blocks: rescale + re-shift path
    w = torch.rand(R) + 0.5
    xr, yr = _on(x).requires_grad_(), _on(y).requires_grad_()
    rows = L.symmetric_kl(xr, yr, reduction="none", temperature=T, backend="triton")
    gx, gy = torch.autograd.grad((rows * _on(w).to(rows.dtype)).sum(), (xr, yr))
    acc, (ax, ay) = oracle_grads(lambda a, b: kl_oracle(a, b, T), (x, y), w, torch.float64)
    same, (sx, sy) = oracle_grads(lambda a, b: kl_oracle(a, b, T, dtype), (x, y), w, dtype)
    check(rows.cpu(), acc, same, 2)
    check(gx.cpu(), ax, sx, 3)
    check(gy.cpu(), ay, sy, 3)


@needs_interp
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("eps", LABEL_SMOOTHING)
@pytest.mark.parametrize("case", params(CE_CASES, SIZES))
def test_triton_cross_entropy(small_blocks, dtype, case, eps):
    skip_unless_affordable(case, dtype)
    R, V = case.R, case.V
    x = (torch.randn(R, V) * 3).to(dtype)
    t = torch.randint(0, V, (R,))
    if R > 2:
        x[1, V // 3:] += 6.0
        t[2] = -100
    w = torch.rand(R) + 0.5
    xr = _on(x).requires_grad_()
    rows = L.cross_entropy(xr, _on(t), label_smoothing=eps, reduction="none", backend="triton")
    (g,) = torch.autograd.grad((rows * _on(w).to(rows.dtype)).sum(), xr)
    acc, (ag,) = oracle_grads(lambda a: ce_oracle(a, t, eps), (x,), w, torch.float64)
    same, (sg,) = oracle_grads(lambda a: ce_oracle(a, t, eps, dtype=dtype), (x,), w, dtype)
    check(rows.cpu(), acc, same, 2)
    check(g.cpu(), ag, sg, 3)
    if R > 2:
        assert rows[2].item() == 0 and torch.all(g[2] == 0)


@needs_interp
def test_triton_special_values(small_blocks):
    """-inf rule, masked rows holding NaN, large logits, all-ignored CE, bad targets."""
    R, V = 4, 700
    x, y = torch.randn(R, V), torch.randn(R, V)
    x[:, 600:] = y[:, 600:] = float("-inf")  # both sides: contributes 0
    x[1] = float("nan")                      # masked row, never read
    x[2, 3] = float("-inf")                  # one side: +inf loss, NaN grads
    x[3] += 1e4
    y[3] -= 1e4
    mask = torch.tensor([True, False, True, True])
    xr, yr = _on(x).requires_grad_(), _on(y).requires_grad_()
    rows = L.symmetric_kl(xr, yr, row_mask=_on(mask), reduction="none", backend="triton")
    gx, gy = torch.autograd.grad(rows.sum(), (xr, yr))
    rows, gx, gy = rows.cpu(), gx.cpu(), gy.cpu()
    assert rows[1] == 0 and torch.all(gx[1] == 0) and torch.all(gy[1] == 0)
    assert rows[2] == math.inf and torch.isnan(gx[2]).all() and torch.isnan(gy[2]).all()
    keep = [0, 3]
    val, (vx, vy) = oracle_grads(kl_oracle, (x[keep, :600], y[keep, :600]), torch.ones(2),
                                 torch.float64)
    same, _ = oracle_grads(lambda a, b: kl_oracle(a, b, 1.0, torch.float32),
                           (x[keep, :600], y[keep, :600]), torch.ones(2), torch.float32)
    check(rows[keep], val, same, 2)
    assert torch.all(gx[keep, 600:] == 0)
    torch.testing.assert_close(gx[keep, :600].double(), vx, rtol=1e-4, atol=1e-7)
    # cross entropy: all rows ignored -> 0 and zero grads; a bad target -> NaN (no raise on GPU)
    xc = _on(torch.randn(3, 50)).requires_grad_()
    loss = L.cross_entropy(xc, _on(torch.full((3,), -100)), label_smoothing=0.1,
                           backend="triton")
    loss.backward()
    assert loss.item() == 0 and torch.all(xc.grad == 0)
    bad = L.cross_entropy(_on(torch.randn(2, 50)), _on(torch.tensor([3, 50])),
                          reduction="none", backend="triton").cpu()
    assert torch.isfinite(bad[0]) and torch.isnan(bad[1])


@needs_interp
def test_triton_gradcheck_fp64():
    x = _on(torch.randn(2, 37, dtype=torch.float64)).requires_grad_()
    y = _on(torch.randn(2, 37, dtype=torch.float64)).requires_grad_()
    t = _on(torch.tensor([4, 36]))
    assert torch.autograd.gradcheck(
        lambda a, b: L.symmetric_kl(a, b, temperature=1.5, backend="triton"), (x, y),
        fast_mode=True)
    assert torch.autograd.gradcheck(
        lambda a: L.cross_entropy(a, t, label_smoothing=0.1, backend="triton"), (x,),
        fast_mode=True)


@needs_interp
def test_triton_fused_linear_matches_reference():
    from test_losses import janus_inputs
    (ha, hn, hx), W, ar_t, m_t, idx = janus_inputs(N=6, M=3, V=300)
    out = {}
    for be in ("triton", "reference"):
        leaves = [t.clone().requires_grad_() for t in (ha, hn, hx, W)]
        total, _ = L.fused_linear_janus_loss(*leaves, ar_t, m_t, idx, chunk_rows=2, backend=be)
        total.backward()
        out[be] = [total.detach()] + [t.grad for t in leaves]
    for a, b in zip(out["triton"], out["reference"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- AOT compile check
_AOT_SCRIPT = r"""
import json, os, subprocess, sys, tempfile
os.environ["TRITON_INTERPRET"] = "0"
import triton
from triton.compiler import ASTSource
from triton.backends.compiler import GPUTarget
from janus_kernels.triton import loss as L
from janus_kernels.triton.aot import resource_usage

res = []
# (logits dtype, mask/smoothing flags, archs): the launch configurations of the launchers
variants = [("fp32", True, (80, 90)), ("bf16", True, (80, 90)), ("fp16", False, (90,)),
            ("fp64", False, (90,))]
for dt, flag, archs in variants:
    a = "fp64" if dt == "fp64" else "fp32"  # accumulation / stats dtype
    f64 = dt == "fp64"
    sigs = {
        "symkl_fwd": ({"X": "*" + dt, "Y": "*" + dt, "MASK": "*u8", "LOSS": "*" + a,
                       "STATS": "*" + a, "stride_x": "i64", "stride_y": "i64", "V": "i32",
                       "PARAM": "*" + a}, {"HAS_MASK": flag, "IS_F64": f64,
                                           "BLOCK": L._FWD_BLOCK}),
        "symkl_bwd": ({"G": "*" + a, "X": "*" + dt, "Y": "*" + dt, "STATS": "*" + a,
                       "MASK": "*u8", "DX": "*" + dt, "DY": "*" + dt, "stride_x": "i64",
                       "stride_y": "i64", "V": "i32", "PARAM": "*" + a},
                      {"HAS_MASK": flag, "IS_F64": f64, "BLOCK": L._BWD_BLOCK}),
        "ce_fwd": ({"X": "*" + dt, "T": "*i64", "LOSS": "*" + a, "STATS": "*" + a,
                    "stride_x": "i64", "V": "i32", "PARAM": "*" + a, "ignore_index": "i32"},
                   {"SMOOTH": flag, "IS_F64": f64, "BLOCK": L._FWD_BLOCK}),
        "ce_bwd": ({"G": "*" + a, "X": "*" + dt, "T": "*i64", "STATS": "*" + a,
                    "DX": "*" + dt, "stride_x": "i64", "V": "i32", "PARAM": "*" + a,
                    "ignore_index": "i32"}, {"IS_F64": f64, "BLOCK": L._BWD_BLOCK}),
    }
    for name, (sig, const) in sigs.items():
        sig = dict(sig, **{k: "constexpr" for k in const})
        for arch in archs:
            src = ASTSource(fn=L.KERNELS[name], signature=sig, constexprs=const)
            k = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                               options={"num_warps": L._warps(const["BLOCK"])})
            res.append(dict(kernel=name, dtype=dt, arch=arch,
                            **resource_usage(k.asm["cubin"])))
print("RESULT" + json.dumps(res))
"""


@pytest.mark.compile_check
def test_triton_loss_aot_compiles_without_spills():
    run_aot_script(_AOT_SCRIPT, expected_rows=24)
