"""The CUDA loss kernels (csrc/cuda/loss.cu, janus_loss.cu), compiled UNCHANGED by g++ against
the CPU emulation (csrc/cuda_emu/), run through their raw launchers (ctypes) under two
schedules of the emulated threads, and compared with

  * the CPU C++ ops torch.ops.janus.symkl_rows_* / ce_rows_* / janus_rows_* (the tested
    same-precision reference: same math, same saved statistics, same special-value rules), and
  * a float64 torch oracle written from the formulas (csrc/cpu/loss.cpp, janus_loss.cpp),

with the COMMON tolerance rule: kernel error vs the oracle <= 2x the CPU op's own error (3x for
gradients) plus a small floor where the reference error is ~0 (fp32 accumulation). Special
values (inf losses, NaN gradient rows, zero rows of masked / ignored rows) must match the CPU
op exactly.
"""
from __future__ import annotations

import os
import shutil
from typing import Optional

import pytest
import torch

import _cuda_emu_lib as emu_lib
import janus_kernels  # noqa: F401  (loads the C++ ops)
# the raw janus:: CPU entries (torch.ops.janus.*_rows_* on CPU tensors, the reference here) are
# registered when the CPU backend module loads; janus_kernels loads backends lazily
import janus_kernels.backends.cpu  # noqa: F401
from _loss_cases import CE_CASES, KL_CASES, LABEL_SMOOTHING, SLOW_SIZES, params

pytestmark = pytest.mark.skipif(
    shutil.which(os.environ.get("CXX", "g++")) is None or emu_lib.cuda_include_dir() is None,
    reason="needs g++ and the CUDA headers (toolkit or nvidia-cuda-runtime wheels)")

OPS = torch.ops.janus
NEG = float("-inf")
# Thread orders of the emulation: 0 forward, 1 reverse (a missing barrier before a shared
# memory read is caught by one of them; cuda_on_cpu.md).
ORDERS = [0, 1]
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
DT_IDS = ["f32", "bf16", "f16", "f64"]


@pytest.fixture(scope="module")
def kern() -> emu_lib.EmuLoss:
    k = emu_lib.EmuLoss(emu_lib.build(sources=emu_lib.LOSS_SOURCES, name="janus_cuda_emu_loss"))
    yield k
    k.configure(-1, -1, 0)


# ------------------------------------------------------------------------------ checking
def _floor(dtype: torch.dtype, scale: float) -> float:
    """Absolute floor for the rule: the CPU op accumulates partial sums in double, so its own
    error can be ~0 where float accumulation on the GPU is a few ulp."""
    rel = 1e-12 if dtype == torch.float64 else 4e-6
    return rel * max(scale, 1.0)


def assert_close(name: str, got: torch.Tensor, ref: torch.Tensor, oracle: torch.Tensor,
                 factor: float, acc_dtype: torch.dtype) -> None:
    """Special values identical to the CPU op; finite values: |got - oracle| <= factor *
    |ref - oracle| + floor (max over the tensor)."""
    assert got.shape == ref.shape == oracle.shape, (name, got.shape, ref.shape, oracle.shape)
    g, r, o = got.double(), ref.double(), oracle.double()
    assert torch.equal(torch.isnan(g), torch.isnan(r)), f"{name}: NaN pattern differs"
    inf_g, inf_r = torch.isinf(g), torch.isinf(r)
    assert torch.equal(inf_g, inf_r) and torch.equal(g[inf_g], r[inf_r]), f"{name}: inf differs"
    fin = torch.isfinite(r)
    if not fin.any():
        return
    assert torch.isfinite(o[fin]).all(), f"{name}: oracle not finite where the CPU op is"
    err = (g[fin] - o[fin]).abs().max().item()
    ref_err = (r[fin] - o[fin]).abs().max().item()
    bound = factor * ref_err + _floor(acc_dtype, o[fin].abs().max().item())
    assert err <= bound, f"{name}: error {err:.3g} > {bound:.3g} (CPU op error {ref_err:.3g})"


def _logits(R: int, V: int, dtype, gen, scale=3.0) -> torch.Tensor:
    return (torch.randn(R, V, generator=gen, dtype=torch.float64) * scale).to(dtype)


# ====================================================================== symmetric KL
def symkl_oracle(x, y, mask, it, grad):
    """float64 loss (rows,) and gradients from the formulas of csrc/cpu/loss.cpp."""
    xs, ys = x.double() * it, y.double() * it
    p, q = torch.softmax(xs, -1), torch.softmax(ys, -1)
    d = xs - ys
    both = (p == 0) & (q == 0)
    d0 = torch.where(both, torch.zeros_like(d), d)
    pd = torch.where(p == 0, torch.zeros_like(d), p * d0)
    qd = torch.where(q == 0, torch.zeros_like(d), q * d0)
    sp, sq = pd.sum(-1, keepdim=True), qd.sum(-1, keepdim=True)
    loss = 0.5 * (sp - sq).squeeze(-1)
    a = 0.5 * it * grad.double()[:, None]
    dx = a * (torch.where(p == 0, torch.zeros_like(d), p * (d0 - sp + 1)) - q)
    dy = a * (torch.where(q == 0, torch.zeros_like(d), q * (1 + sq - d0)) - p)
    if mask is not None:
        keep = mask[:, None]
        loss = torch.where(mask, loss, torch.zeros_like(loss))
        dx = torch.where(keep, dx, torch.zeros_like(dx))
        dy = torch.where(keep, dy, torch.zeros_like(dy))
    return loss, dx, dy


def _symkl_inputs(R, V, dtype, seed, special: bool):
    gen = torch.Generator().manual_seed(seed)
    x, y = _logits(R, V, dtype, gen), _logits(R, V, dtype, gen)
    mask = None
    if special and R >= 5:
        x[0, :: 3] = NEG                       # both -inf where both are: finite loss
        y[0, :: 3] = NEG
        y[1, 1] = NEG                          # one side only: +inf loss, NaN gradients
        x[2] += 1e4                            # large logits
        y[2] += 1e4
        mask = torch.ones(R, dtype=torch.bool)
        mask[3] = False                        # skipped row: loss 0, zero gradients
        x[3] = float("nan")                    # ... and never read
    if special and R >= 1 and V == 1:
        x[0, 0] = 2.0
    return x, y, mask


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("case", params(KL_CASES, SLOW_SIZES))   # the one loss case table
def test_symkl_matches_cpu_and_oracle(kern, case, dtype, order):
    R, V = case.R, case.V
    kern.configure(order=order, workers=2)
    it = 1.0 / case.T
    x, y, mask = _symkl_inputs(R, V, dtype, seed=R * 7919 + V, special=True)
    acc = emu_lib._acc(dtype)
    loss, st = kern.symkl_fwd(x, y, mask, it)
    loss_r, st_r = OPS.symkl_rows_fwd(x, y, mask, it)
    grad = torch.randn(R, dtype=torch.float64).to(acc) * 3
    o_loss, o_dx, o_dy = symkl_oracle(x, y, mask, it, grad)
    assert_close("loss", loss, loss_r, o_loss, 2.0, acc)
    torch.testing.assert_close(st, st_r, rtol=1e-5 if acc == torch.float32 else 1e-12,
                               atol=1e-5 if acc == torch.float32 else 1e-12, equal_nan=True)
    dx, dy = kern.symkl_bwd(grad, x, y, st, mask, it)
    dx_r, dy_r = OPS.symkl_rows_bwd(grad, x, y, st_r, mask, it)
    assert dx.dtype == dtype and dy.dtype == dtype
    assert_close("dx", dx, dx_r, o_dx, 3.0, acc)
    assert_close("dy", dy, dy_r, o_dy, 3.0, acc)
    if mask is not None:
        assert loss[3] == 0 and (dx[3] == 0).all() and (dy[3] == 0).all()
        assert loss[1] == float("inf") and dx[1].isnan().all() and dy[1].isnan().all()


def test_symkl_random_thread_order_and_strided_rows(kern):
    """Random interleaving of the emulated threads, and row-strided (non-contiguous) logits."""
    kern.configure(order=2, workers=2, seed=3)
    gen = torch.Generator().manual_seed(5)
    big = _logits(6, 2 * 1300, torch.bfloat16, gen)
    x, y = big[:, :1271], big[:, 1300:1300 + 1271]
    assert not x.is_contiguous()
    loss, st = kern.symkl_fwd(x, y, None, 1.0)
    loss_r, st_r = OPS.symkl_rows_fwd(x, y, None, 1.0)
    grad = torch.rand(6)
    o_loss, o_dx, o_dy = symkl_oracle(x, y, None, 1.0, grad)
    assert_close("loss", loss, loss_r, o_loss, 2.0, torch.float32)
    dx, dy = kern.symkl_bwd(grad, x, y, st, None, 1.0)
    dx_r, dy_r = OPS.symkl_rows_bwd(grad, x, y, st_r, None, 1.0)
    assert_close("dx", dx, dx_r, o_dx, 3.0, torch.float32)
    assert_close("dy", dy, dy_r, o_dy, 3.0, torch.float32)


# ====================================================================== cross entropy
def ce_oracle(x, target, eps, ignore_index, grad):
    xd = x.double()
    R, V = xd.shape
    valid = target != ignore_index
    t = torch.where(valid, target, torch.zeros_like(target))
    lse = torch.logsumexp(xd, -1)
    xt = xd.gather(1, t[:, None]).squeeze(1) if R else lse
    loss = (1 - eps) * (lse - xt)
    if eps > 0:
        loss = loss + eps * (lse - xd.mean(-1))
    loss = torch.where(valid, loss, torch.zeros_like(loss))
    p = torch.softmax(xd, -1)
    onehot = torch.zeros_like(p)
    if R:
        onehot.scatter_(1, t[:, None], 1.0)
    dx = grad.double()[:, None] * (p - eps / V - (1 - eps) * onehot)
    dx = torch.where(valid[:, None], dx, torch.zeros_like(dx))
    return loss, dx


def _ce_inputs(R, V, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    x = _logits(R, V, dtype, gen)
    target = torch.randint(0, V, (R,), generator=gen)
    if R >= 3:
        target[1] = -100                        # ignored: loss 0, zero gradients, not read
        x[1] = float("nan")
        if V > 1:
            x[2, (target[2] + 1) % V] = NEG      # a -inf logit: +inf loss when eps > 0
        x[0] += 5e3                             # large logits
    return x, target


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("eps", LABEL_SMOOTHING)
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("case", params(CE_CASES, SLOW_SIZES))   # the one loss case table
def test_ce_matches_cpu_and_oracle(kern, case, dtype, eps, order):
    R, V = case.R, case.V
    kern.configure(order=order, workers=2)
    x, target = _ce_inputs(R, V, dtype, seed=R * 131 + V)
    acc = emu_lib._acc(dtype)
    loss, st = kern.ce_fwd(x, target, eps, -100)
    loss_r, st_r = OPS.ce_rows_fwd(x, target, eps, -100)
    grad = torch.randn(R, dtype=torch.float64).to(acc) * 2
    o_loss, o_dx = ce_oracle(x, target, eps, -100, grad)
    assert_close("loss", loss, loss_r, o_loss, 2.0, acc)
    torch.testing.assert_close(st, st_r, rtol=1e-5 if acc == torch.float32 else 1e-12,
                               atol=0.0, equal_nan=True)
    dx = kern.ce_bwd(grad, x, target, st, eps, -100)
    dx_r = OPS.ce_rows_bwd(grad, x, target, st_r, eps, -100)
    assert dx.dtype == dtype
    assert_close("dx", dx, dx_r, o_dx, 3.0, acc)
    if R >= 3:
        assert loss[1] == 0 and (dx[1] == 0).all()
        if eps > 0 and V > 1:
            assert loss[2] == float("inf")


def test_ce_out_of_range_target_gives_nan(kern):
    """The CPU op raises; the CUDA kernel cannot without a host sync: NaN loss, zero grads."""
    kern.configure(order=0, workers=2)
    x = torch.randn(3, 9)
    target = torch.tensor([2, 9, -1])
    with pytest.raises(RuntimeError, match="target"):
        OPS.ce_rows_fwd(x, target, 0.1, -100)
    loss, st = kern.ce_fwd(x, target, 0.1, -100)
    assert torch.isfinite(loss[0]) and loss[1:].isnan().all()
    dx = kern.ce_bwd(torch.ones(3), x, target, st, 0.1, -100)
    assert torch.isfinite(dx).all() and (dx[1:] == 0).all()


def test_launchers_reject_bad_sizes(kern):
    with pytest.raises(emu_lib.EmuError, match="cudaError 1"):
        kern.ce_fwd(torch.randn(2, 3)[:, :0], torch.zeros(2, dtype=torch.long), 0.0, -100)


# ================================================================ fused JANUS criterion rows
IGN = -100


def janus_oracle(ar, nar, aux, ar_t, m_t, idx, eps, g_ar, g_m):
    """float64 losses (N,), (M, 5) and gradients from the separate-term formulas
    (csrc/cpu/janus_loss.cpp): CE per AR row; per masked row with a target CE(n), CE(x),
    KLs(a_idx, n), KLs(a_idx, x), KLs(n, x); a zero upstream gradient drops its term."""
    N, V = ar.shape
    M = nar.shape[0]
    ar_loss, d_ar = ce_oracle(ar, ar_t, eps, IGN, g_ar)
    valid = m_t != IGN
    a_rows = ar.double()[idx] if M else ar.double()[:0]
    ce_n, d_n = ce_oracle(nar, m_t, eps, IGN, g_m[:, 0])
    ce_x, d_x = ce_oracle(aux, m_t, eps, IGN, g_m[:, 1])
    m_loss = [ce_n, ce_x]
    d_a_extra = torch.zeros(M, V, dtype=torch.float64)
    for col, (p, q, dp_acc, dq_acc) in zip((2, 3, 4), (
            (a_rows, nar, "a", "n"), (a_rows, aux, "a", "x"), (nar, aux, "n", "x"))):
        g = g_m[:, col]
        loss, dp, dq = symkl_oracle(p, q, valid, 1.0, g)
        drop = (g == 0)[:, None]
        dp = torch.where(drop, torch.zeros_like(dp), dp)
        dq = torch.where(drop, torch.zeros_like(dq), dq)
        m_loss.append(loss)
        for acc_name, dv in ((dp_acc, dp), (dq_acc, dq)):
            if acc_name == "a":
                d_a_extra = d_a_extra + dv
            elif acc_name == "n":
                d_n = d_n + dv
            else:
                d_x = d_x + dv
    m_loss = torch.stack(m_loss, 1) if M else torch.zeros(0, 5, dtype=torch.float64)
    m_loss = torch.where(valid[:, None], m_loss, torch.zeros_like(m_loss))
    d_n = torch.where(valid[:, None], d_n, torch.zeros_like(d_n))
    d_x = torch.where(valid[:, None], d_x, torch.zeros_like(d_x))
    if M:
        d_ar = d_ar.index_add(0, idx[valid], d_a_extra[valid])
    return ar_loss, m_loss, d_ar, d_n, d_x


def _janus_case(name: str, dtype, seed: int = 0):
    """(ar, nar, aux, ar_t, m_t, idx, eps, g_ar, g_m) for a named awkward case."""
    gen = torch.Generator().manual_seed(seed)
    spec = {"basic": (5, 4, 113), "wide": (3, 3, 2051), "v1": (2, 2, 1), "one": (1, 1, 7),
            "m0": (3, 0, 113), "dups": (4, 7, 1271), "inf": (4, 4, 113),
            "zero_weight": (4, 4, 113), "eps0": (4, 3, 7), "strided": (3, 3, 113)}[name]
    N, M, V = spec
    ar, nar, aux = (_logits(R, V, dtype, gen) for R in (N, M, M))
    if name == "strided":            # row-strided views (a row stride != V)
        ar, nar, aux = (_logits(R, V + 9, dtype, gen)[:, 4:4 + V] for R in (N, M, M))
    ar_t = torch.randint(0, V, (N,), generator=gen)
    m_t = torch.randint(0, V, (M,), generator=gen)
    idx = torch.randperm(N, generator=gen)[:M] if M <= N else torch.randint(0, N, (M,),
                                                                           generator=gen)
    eps = 0.0 if name == "eps0" else 0.1
    acc = emu_lib._acc(dtype)
    g_ar = (torch.rand(N, generator=gen, dtype=torch.float64) + 0.5).to(acc)
    g_m = (torch.randn(M, 5, generator=gen, dtype=torch.float64)).to(acc)
    if name == "basic":
        ar_t[1] = IGN                  # AR CE ignored (its row still feeds the KLs)
        m_t[2] = IGN                   # masked row ignored: 5 zeros, zero gradient rows
        nar[2] = float("nan")          # ... and never read
        ar[idx[0]] += 3e3              # large logits on one triple
        nar[0] += 3e3
        aux[0] -= 3e3
    if name == "wide":
        ar_t[0] = IGN
    if name == "dups":
        idx = torch.tensor([0, 2, 0, 3, 2, 0, 1])   # AR row 0 claimed 3x, row 2 2x
        m_t[0] = IGN                   # the primary of row 0 is ignored: extras still count
        m_t[4] = IGN                   # an ignored extra
        ar_t[2] = IGN
    if name == "inf":
        for t in (ar, nar, aux):       # -inf in all three rows at the same columns: finite
            t[:, ::5] = NEG
        ar_t[:] = 1
        m_t[:] = 2
        nar[1, 3] = NEG                # one side only: KLs(a,n), KLs(n,x) of row 1 infinite
        g_m[1, 2] = 0.0                # KLs(a,n) weight 0: dropped, d_ar stays finite
        aux[2, 4] = NEG                # KLs(a,x), KLs(n,x) of row 2 infinite, non-zero grads:
                                       # NaN d_ar (its AR row), d_nar, d_aux
    if name == "zero_weight":
        g_m[0] = 0.0
        g_m[1, 2:] = 0.0
        g_ar[2] = 0.0
    return ar, nar, aux, ar_t, m_t, idx, eps, g_ar, g_m


JANUS_CASES = ["basic", "wide", "v1", "one", "m0", "dups", "inf", "zero_weight", "eps0",
               "strided"]


def _run_janus(kern, case, dtype, order):
    kern.configure(order=order, workers=2)
    ar, nar, aux, ar_t, m_t, idx, eps, g_ar, g_m = _janus_case(case, dtype)
    acc = emu_lib._acc(dtype)
    fwd = kern.janus_fwd(ar, nar, aux, ar_t, m_t, idx, eps, IGN)
    fwd_r = OPS.janus_rows_fwd(ar, nar, aux, ar_t, m_t, idx, eps, IGN)
    o_ar, o_m, o_da, o_dn, o_dx = janus_oracle(ar, nar, aux, ar_t, m_t, idx, eps, g_ar, g_m)
    assert_close("ar_loss", fwd[0], fwd_r[0], o_ar, 2.0, acc)
    assert_close("masked_loss", fwd[1], fwd_r[1], o_m, 2.0, acc)
    tol = 2e-5 if acc == torch.float32 else 1e-12
    for name, st, st_r in (("ar_stats", fwd[2], fwd_r[2]), ("masked_stats", fwd[3], fwd_r[3])):
        torch.testing.assert_close(st, st_r, rtol=tol, atol=tol, equal_nan=True, msg=name)
    grads = kern.janus_bwd(g_ar, g_m, ar, nar, aux, ar_t, m_t, idx, fwd[2], fwd[3], eps, IGN)
    grads_r = OPS.janus_rows_bwd(g_ar, g_m, ar, nar, aux, ar_t, m_t, idx, fwd_r[2], fwd_r[3],
                                 eps, IGN)
    for name, g, g_r, o in zip(("d_ar", "d_nar", "d_aux"), grads, grads_r, (o_da, o_dn, o_dx)):
        assert g.dtype == dtype
        assert_close(name, g, g_r, o, 3.0, acc)
    return fwd, grads


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("case", JANUS_CASES)
def test_janus_rows_match_cpu_and_oracle(kern, case, dtype, order):
    fwd, grads = _run_janus(kern, case, dtype, order)
    if case == "inf":
        assert fwd[1][1, 2] == float("inf") and fwd[1][2, 3] == float("inf")
        assert torch.isfinite(grads[1][0]).all() and grads[1][1].isnan().all()
        assert grads[2][2].isnan().all()
    if case == "basic":
        assert (fwd[1][2] == 0).all() and (grads[1][2] == 0).all() and (grads[2][2] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64], ids=["f16", "f64"])
@pytest.mark.parametrize("case", ["basic", "dups"])
def test_janus_rows_other_dtypes(kern, case, dtype):
    _run_janus(kern, case, dtype, order=0)


def test_janus_rows_random_thread_order(kern):
    _run_janus(kern, "dups", torch.bfloat16, order=2)


def test_janus_rows_out_of_range_gives_nan(kern):
    """The CPU op raises on a bad target / idx value; the kernels (no host sync) give NaN for
    the terms that use it and NaN gradient rows, and leave the other rows intact."""
    kern.configure(order=0, workers=2)
    ar, nar, aux, ar_t, m_t, idx, eps, g_ar, g_m = _janus_case("basic", torch.float32)
    ar_t[3], m_t[1], idx[0] = 500, -7, 9
    with pytest.raises(RuntimeError):
        OPS.janus_rows_fwd(ar, nar, aux, ar_t, m_t, idx, eps, IGN)
    ar_loss, m_loss, ar_st, m_st = kern.janus_fwd(ar, nar, aux, ar_t, m_t, idx, eps, IGN)
    assert ar_loss[3].isnan() and m_loss[0].isnan().all() and m_loss[1].isnan().all()
    assert torch.isfinite(m_loss[3]).all() and torch.isfinite(ar_loss[[0, 1, 2, 4]]).all()
    d_ar, d_n, d_x = kern.janus_bwd(g_ar, g_m, ar, nar, aux, ar_t, m_t, idx, ar_st, m_st, eps,
                                    IGN)
    assert d_ar[3].isnan().all() and d_n[:2].isnan().all() and d_x[:2].isnan().all()
    assert torch.isfinite(d_n[3]).all() and torch.isfinite(d_ar[[0, 1, 2, 4]]).all()
