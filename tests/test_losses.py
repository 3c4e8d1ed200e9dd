"""Fused losses (janus_kernels.losses) on CPU: the C++ kernels ("cpu") and the eager backend
("reference") against independent torch oracles (F.kl_div both ways, F.cross_entropy).

Tolerance rule (COMMON.md): error vs the float64 oracle <= 2x (3x for gradients) the error of
the same oracle evaluated in the input precision, plus a small relative floor."""
import math

import pytest
import torch
import torch.nn.functional as F

from janus_kernels import _ext
from janus_kernels import backends as jk_backends
from janus_kernels import losses as L

from _loss_cases import CE_CASES, CPU_SIZES, KL_CASES, LABEL_SMOOTHING, params, \
    skip_unless_affordable

# the CPU kernels run once per CPU ISA level this machine has (conftest.cpu_isa_level)
pytestmark = pytest.mark.usefixtures("cpu_isa_level")

BACKENDS = [pytest.param("cpu", marks=pytest.mark.skipif(not _ext.available(),
                                                         reason="extension not built")),
            "reference"]
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


# ---------------------------------------------------------------------------- oracles
def kl_oracle(x, y, T=1.0, dtype=torch.float64):
    """Per-row 1/2 [KL(p||q) + KL(q||p)] with F.kl_div, computed in `dtype`."""
    lp = F.log_softmax(x.to(dtype) / T, -1)
    lq = F.log_softmax(y.to(dtype) / T, -1)
    kl_pq = F.kl_div(lq, lp, log_target=True, reduction="none").sum(-1)  # sum p (lp - lq)
    kl_qp = F.kl_div(lp, lq, log_target=True, reduction="none").sum(-1)
    return 0.5 * (kl_pq + kl_qp)


def ce_oracle(x, t, eps, ignore_index=-100, dtype=torch.float64):
    return F.cross_entropy(x.to(dtype), t, label_smoothing=eps, ignore_index=ignore_index,
                           reduction="none")


def reduce_rows(rows, reduction, count):
    if reduction == "none":
        return rows
    return rows.sum() if reduction == "sum" else rows.sum() / max(count, 1)


def oracle_grads(fn, inputs, weights, dtype):
    """(value, grads) of sum(weights * fn(*inputs)) with the inputs cast to `dtype`."""
    xs = [t.detach().to(dtype).requires_grad_() for t in inputs]
    v = fn(*xs)
    g = torch.autograd.grad((v * weights.to(v.dtype)).sum(), xs)
    return v.detach(), g


def max_err(a, b):
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def check(out, acc, same, mult, floor=2e-6):
    """out, same: results in the input precision; acc: the float64 oracle."""
    assert torch.isnan(out).eq(torch.isnan(acc)).all(), "NaN pattern differs from the oracle"
    ok = ~torch.isnan(acc)
    if not ok.any():
        return
    o, a, s = out[ok], acc[ok], same[ok]
    scale = a.abs().max().item() if a.numel() else 0.0
    tol = mult * max_err(s, a) + floor * max(scale, 1e-30)
    assert max_err(o, a) <= tol, f"error {max_err(o, a):.3g} > {tol:.3g} (reference error " \
                                 f"{max_err(s, a):.3g}, scale {scale:.3g})"


def rows_kl(x, y, T=1.0, dtype=torch.float64):
    return kl_oracle(x, y, T, dtype)


# ---------------------------------------------------------------- symmetric KL: values
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", params(KL_CASES, CPU_SIZES))   # the one loss case table
def test_symmetric_kl_matches_oracle(backend, dtype, case):
    skip_unless_affordable(case, dtype)
    R, V, T = case.R, case.V, case.T
    x = (torch.randn(R, V) * 3).to(dtype)
    y = (torch.randn(R, V) * 3 + 0.5).to(dtype)
    w = torch.rand(R) + 0.5  # upstream gradient != 1, different per row
    xr, yr = x.clone().requires_grad_(), y.clone().requires_grad_()
    rows = L.symmetric_kl(xr, yr, reduction="none", temperature=T, backend=backend)
    assert rows.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    gx, gy = torch.autograd.grad((rows * w.to(rows.dtype)).sum(), (xr, yr))
    assert gx.dtype == dtype and gy.dtype == dtype
    acc, (ax, ay) = oracle_grads(lambda a, b: kl_oracle(a, b, T), (x, y), w, torch.float64)
    same, (sx, sy) = oracle_grads(lambda a, b: kl_oracle(a, b, T, dtype), (x, y), w, dtype)
    check(rows, acc, same, 2)
    check(gx, ax, sx, 3)
    check(gy, ay, sy, 3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_symmetric_kl_reductions_and_row_mask(backend, reduction):
    R, V = 6, 300
    x, y = torch.randn(R, V) * 2, torch.randn(R, V) * 2
    mask = torch.tensor([True, False, True, True, False, True])
    x[~mask] = float("nan")  # unselected rows are never read
    y[1] = float("inf")
    xr, yr = x.clone().requires_grad_(), y.clone().requires_grad_()
    out = L.symmetric_kl(xr, yr, row_mask=mask, reduction=reduction, backend=backend)
    (out * 1.7).sum().backward()
    acc_rows = torch.where(mask, kl_oracle(torch.where(mask[:, None], x, 0.0),
                                           torch.where(mask[:, None], y, 0.0)), 0.0)
    expect = reduce_rows(acc_rows, reduction, int(mask.sum()))
    torch.testing.assert_close(out.double(), expect, rtol=2e-6, atol=1e-6)
    assert torch.all(xr.grad[~mask] == 0) and torch.all(yr.grad[~mask] == 0)
    assert torch.isfinite(xr.grad).all() and torch.isfinite(yr.grad).all()
    xs, ys = x[mask].double().requires_grad_(), y[mask].double().requires_grad_()
    ref = reduce_rows(kl_oracle(xs, ys), reduction, int(mask.sum()))
    gx, gy = torch.autograd.grad((ref * 1.7).sum(), (xs, ys))
    # atol: fp32 cancellation in p(d - s_p + 1) - q; the generic (non-AVX-512) build of the
    # kernel lands ~2e-8 off the fp64 oracle on elements of size ~1e-3
    torch.testing.assert_close(xr.grad[mask].double(), gx, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(yr.grad[mask].double(), gy, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_symmetric_kl_all_rows_masked_and_empty(backend):
    x = torch.randn(3, 50, requires_grad=True)
    y = torch.randn(3, 50, requires_grad=True)
    loss = L.symmetric_kl(x, y, row_mask=torch.zeros(3, dtype=torch.bool), backend=backend)
    loss.backward()
    assert loss.item() == 0 and torch.all(x.grad == 0) and torch.all(y.grad == 0)
    e = torch.empty(0, 50, requires_grad=True)
    loss = L.symmetric_kl(e, e.detach().clone(), backend=backend)
    loss.backward()
    assert loss.item() == 0 and e.grad.shape == (0, 50)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_symmetric_kl_large_logits(backend, dtype):
    """|logits| ~ 1e4 and a 1e4 shift between the sides: the shift cancels exactly in the
    math and must not cost accuracy (d = x - y alone would lose ~1e-3 to rounding)."""
    R, V = 4, 1000
    x = torch.randn(R, V) * 3
    y = x + torch.randn(R, V)
    x[0] += 1e4                      # whole-row shift on one side
    y[1] -= 1e4
    x[2, :10] = 1e4                  # a few huge entries
    y[2, 5:15] = -1e4
    x[3] = torch.randn(V) * 1e4      # very peaked distributions
    y[3] = torch.randn(V) * 1e4
    x, y = x.to(dtype), y.to(dtype)
    w = torch.rand(R) + 0.5
    xr, yr = x.clone().requires_grad_(), y.clone().requires_grad_()
    rows = L.symmetric_kl(xr, yr, reduction="none", backend=backend)
    gx, gy = torch.autograd.grad((rows * w.to(rows.dtype)).sum(), (xr, yr))
    acc, (ax, ay) = oracle_grads(kl_oracle, (x, y), w, torch.float64)
    same, (sx, sy) = oracle_grads(lambda a, b: kl_oracle(a, b, 1.0, dtype), (x, y), w,
                                  torch.float32 if dtype == torch.bfloat16 else dtype)
    check(rows, acc, same, 2)
    check(gx, ax, sx, 3)
    check(gy, ay, sy, 3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_symmetric_kl_neg_inf_rule(backend):
    """-inf on both sides: the entry contributes 0 (as if the column did not exist) and gets
    zero gradient. -inf on one side only: that row's loss is +inf, its gradients NaN."""
    R, V = 3, 40
    x, y = torch.randn(R, V), torch.randn(R, V)
    x[:, :5] = float("-inf")
    y[:, :5] = float("-inf")
    x[2, 20] = float("-inf")          # one-sided in row 2 only
    w = torch.tensor([1.0, 2.0, 3.0])
    xr, yr = x.clone().requires_grad_(), y.clone().requires_grad_()
    rows = L.symmetric_kl(xr, yr, reduction="none", backend=backend)
    gx, gy = torch.autograd.grad((rows * w).sum(), (xr, yr))
    assert rows[2].item() == math.inf
    assert torch.isnan(gx[2]).all() and torch.isnan(gy[2]).all()
    val, (vx, vy) = oracle_grads(kl_oracle, (x[:2, 5:], y[:2, 5:]), w[:2], torch.float64)
    torch.testing.assert_close(rows[:2].double(), val, rtol=1e-5, atol=1e-7)
    assert torch.all(gx[:2, :5] == 0) and torch.all(gy[:2, :5] == 0)
    torch.testing.assert_close(gx[:2, 5:].double(), vx, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(gy[:2, 5:].double(), vy, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("backend", BACKENDS)
def test_symmetric_kl_noncontiguous_and_batched(backend):
    B, Lq, V = 2, 3, 129
    base_x = torch.randn(B, Lq, 2 * V)
    base_y = torch.randn(B, V, Lq)
    x = base_x[..., ::2]                  # last-dim stride 2 (copied internally)
    y = base_y.transpose(1, 2)            # fully strided
    z = torch.randn(B * Lq, V + 7)[:, :V]  # row stride != V, unit column stride (no copy)
    mask = torch.tensor([[True, False, True], [True, True, True]])
    xs, ys = x.clone(), y.clone()
    xr, yr = x.requires_grad_(), y.requires_grad_()
    out = L.symmetric_kl(xr, yr, row_mask=mask, reduction="none", backend=backend)
    assert out.shape == (B, Lq)
    ref = torch.where(mask, kl_oracle(xs, ys), 0.0)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-7)
    out.sum().backward()
    assert xr.grad.shape == x.shape and torch.isfinite(xr.grad).all()
    zz = z.reshape(B, Lq, V)
    out2 = L.symmetric_kl(zz, xs, reduction="none", backend=backend)
    torch.testing.assert_close(out2.double(), kl_oracle(zz, xs), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_inputs_unmodified(backend):
    x, y = torch.randn(4, 100), torch.randn(4, 100)
    t = torch.tensor([3, -100, 7, 99])
    copies = [a.clone() for a in (x, y, t)]
    xr, yr = x.requires_grad_(), y.requires_grad_()
    (L.symmetric_kl(xr, yr, backend=backend) +
     L.cross_entropy(xr, t, label_smoothing=0.1, backend=backend)).backward()
    for a, b in zip((x, y, t), copies):
        assert torch.equal(a.detach(), b)


# ------------------------------------------------------------------- cross entropy
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("eps", LABEL_SMOOTHING)
@pytest.mark.parametrize("case", params(CE_CASES, CPU_SIZES))   # the one loss case table
def test_cross_entropy_matches_oracle(backend, dtype, eps, case):
    skip_unless_affordable(case, dtype)
    R, V = case.R, case.V
    x = (torch.randn(R, V) * 3).to(dtype)
    t = torch.randint(0, V, (R,))
    if R > 1:
        t[1] = -100
    w = torch.rand(R) + 0.5
    xr = x.clone().requires_grad_()
    rows = L.cross_entropy(xr, t, label_smoothing=eps, reduction="none", backend=backend)
    (g,) = torch.autograd.grad((rows * w.to(rows.dtype)).sum(), xr)
    acc, (ag,) = oracle_grads(lambda a: ce_oracle(a, t, eps), (x,), w, torch.float64)
    same, (sg,) = oracle_grads(lambda a: ce_oracle(a, t, eps, dtype=dtype), (x,), w, dtype)
    check(rows, acc, same, 2)
    check(g, ag, sg, 3)
    if R > 1:
        assert rows[1] == 0 and torch.all(g[1] == 0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_reductions(backend, reduction):
    x = torch.randn(2, 3, 50)
    t = torch.randint(0, 50, (2, 3))
    t[0, 1] = 7777  # custom ignore_index
    xr = x.clone().requires_grad_()
    out = L.cross_entropy(xr, t, label_smoothing=0.2, ignore_index=7777, reduction=reduction,
                          backend=backend)
    (out * 0.3).sum().backward()
    xo = x.clone().requires_grad_()
    ref = F.cross_entropy(xo.reshape(-1, 50), t.reshape(-1), label_smoothing=0.2,
                          ignore_index=7777, reduction=reduction)
    ref = ref.reshape(2, 3) if reduction == "none" else ref
    (ref * 0.3).sum().backward()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(xr.grad, xo.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cross_entropy_all_ignored(backend):
    x = torch.randn(3, 40, requires_grad=True)
    t = torch.full((3,), -100)
    loss = L.cross_entropy(x, t, label_smoothing=0.1, backend=backend)
    loss.backward()
    assert loss.item() == 0 and torch.all(x.grad == 0)
    e = torch.empty(0, 40, requires_grad=True)
    assert L.cross_entropy(e, torch.empty(0, dtype=torch.long), backend=backend).item() == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_cross_entropy_neg_inf_and_large(backend):
    V = 300
    x = torch.randn(4, V) * 2
    x[:, 100:110] = float("-inf")
    x[2] += 1e4
    x[3, :50] = -1e4
    t = torch.tensor([3, 5, 120, 60])
    xr = x.clone().requires_grad_()
    rows = L.cross_entropy(xr, t, reduction="none", backend=backend)  # eps = 0: finite
    rows.sum().backward()
    acc, (ag,) = oracle_grads(lambda a: ce_oracle(a, t, 0.0), (x,), torch.ones(4), torch.float64)
    same, (sg,) = oracle_grads(lambda a: ce_oracle(a, t, 0.0, dtype=torch.float32), (x,),
                               torch.ones(4), torch.float32)
    check(rows, acc, same, 2)
    check(xr.grad, ag, sg, 3)
    rows = L.cross_entropy(x, t, label_smoothing=0.1, reduction="none", backend=backend)
    assert torch.all(rows == math.inf)  # smoothing mass on impossible tokens


@pytest.mark.parametrize("backend", BACKENDS)
def test_cross_entropy_bad_target(backend):
    with pytest.raises((RuntimeError, ValueError), match="target"):
        L.cross_entropy(torch.randn(2, 10), torch.tensor([1, 10]), backend=backend)


# ---------------------------------------------------------------- argument checking
def test_argument_errors():
    x = torch.randn(2, 5)
    with pytest.raises(ValueError, match="same shape"):
        L.symmetric_kl(x, torch.randn(2, 6))
    with pytest.raises(TypeError, match="share a dtype"):
        L.symmetric_kl(x, x.double())
    with pytest.raises(ValueError, match="reduction"):
        L.symmetric_kl(x, x, reduction="batchmean")
    with pytest.raises(ValueError, match="temperature"):
        L.symmetric_kl(x, x, temperature=0.0)
    with pytest.raises(ValueError, match="row_mask"):
        L.symmetric_kl(x, x, row_mask=torch.ones(3, dtype=torch.bool))
    with pytest.raises(TypeError, match="row_mask"):
        L.symmetric_kl(x, x, row_mask=torch.ones(2))
    with pytest.raises(TypeError, match="logits"):
        L.symmetric_kl(x.long(), x.long())
    with pytest.raises(ValueError, match="backend"):
        L.symmetric_kl(x, x, backend="cuda")
    with pytest.raises(ValueError, match="target"):
        L.cross_entropy(x, torch.tensor([1, 2, 3]))
    with pytest.raises(TypeError, match="target"):
        L.cross_entropy(x, torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="label_smoothing"):
        L.cross_entropy(x, torch.tensor([1, 2]), label_smoothing=1.5)


# -------------------------------------------------------------- autograd machinery
@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_fp64(backend):
    x = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    y = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([True, False, True])
    t = torch.tensor([2, -100, 6])
    assert torch.autograd.gradcheck(
        lambda a, b: L.symmetric_kl(a, b, row_mask=mask, temperature=1.3, backend=backend),
        (x, y), fast_mode=True)
    assert torch.autograd.gradcheck(
        lambda a, b: L.symmetric_kl(a, b, reduction="none", backend=backend), (x, y),
        fast_mode=True)
    assert torch.autograd.gradcheck(
        lambda a: L.cross_entropy(a, t, label_smoothing=0.1, reduction="none",
                                  backend=backend), (x,), fast_mode=True)


def test_opcheck_custom_ops():
    backend = jk_backends.default_backend("symmetric_kl", "cpu")
    x, y = torch.randn(3, 37, requires_grad=True), torch.randn(3, 37, requires_grad=True)
    mask = torch.tensor([True, False, True])
    t = torch.tensor([1, -100, 36])
    torch.library.opcheck(torch.ops.janus.symmetric_kl_fwd, (x, y, mask, 0.5, backend))
    torch.library.opcheck(torch.ops.janus.cross_entropy_fwd, (x, t, 0.1, -100, backend))
    loss, st = torch.ops.janus.symmetric_kl_fwd(x.detach(), y.detach(), None, 1.0, backend)
    torch.library.opcheck(torch.ops.janus.symmetric_kl_bwd,
                          (torch.rand(3), x.detach(), y.detach(), st, None, 1.0, backend))
    (ha, hn, hx), W, ar_t, m_t, idx = janus_inputs(N=5, M=3, V=40)
    leaves = tuple(t.clone().requires_grad_() for t in (ha, hn, hx, W))
    torch.library.opcheck(torch.ops.janus.fused_linear_janus,
                          leaves + (ar_t, m_t, idx, [1.0, 0.5, 0.5, 1.0, 3.0, 1.0], 0.1, -100,
                                    2, True, backend))


def test_torch_compile_fullgraph():
    backend = jk_backends.default_backend("symmetric_kl", "cpu")
    f = torch.compile(lambda a, b, m: L.symmetric_kl(a, b, row_mask=m, backend=backend) * 2.0,
                      fullgraph=True)
    x, y = torch.randn(4, 33, requires_grad=True), torch.randn(4, 33, requires_grad=True)
    m = torch.tensor([True, True, False, True])
    out = f(x, y, m)
    out.backward()
    x2, y2 = x.detach().clone().requires_grad_(), y.detach().clone().requires_grad_()
    ref = L.symmetric_kl(x2, y2, row_mask=m, backend=backend) * 2.0
    ref.backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(x.grad, x2.grad)


# ------------------------------------------------------------------- fuzzing
hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(R=st.integers(0, 4), V=st.integers(1, 80), scale=st.floats(0.01, 30.0),
                  eps=st.sampled_from([0.0, 0.1, 0.7]), seed=st.integers(0, 2 ** 16),
                  T=st.sampled_from([1.0, 0.5, 3.0]))
def test_fuzz_against_oracle(R, V, scale, eps, seed, T):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(R, V, generator=g) * scale
    y = torch.randn(R, V, generator=g) * scale
    t = torch.randint(-1, V, (R,), generator=g)
    mask = torch.rand(R, generator=g) > 0.3
    backend = jk_backends.default_backend("symmetric_kl", "cpu")
    xr, yr = x.clone().requires_grad_(), y.clone().requires_grad_()
    kl = L.symmetric_kl(xr, yr, row_mask=mask, temperature=T, reduction="sum", backend=backend)
    ce = L.cross_entropy(xr, t, label_smoothing=eps, ignore_index=-1, reduction="sum",
                         backend=backend)
    (kl + 0.5 * ce).backward()
    xd, yd = x.double().requires_grad_(), y.double().requires_grad_()
    rk = torch.where(mask, kl_oracle(xd, yd, T), 0.0).sum()
    rc = ce_oracle(xd, t, eps, ignore_index=-1).sum()
    (rk + 0.5 * rc).backward()
    scale_l = 1.0 + rk.abs().item() + rc.abs().item()
    assert abs(kl.item() - rk.item()) <= 1e-5 * scale_l
    assert abs(ce.item() - rc.item()) <= 1e-5 * scale_l
    torch.testing.assert_close(xr.grad.double(), xd.grad, rtol=1e-4, atol=2e-6)
    torch.testing.assert_close(yr.grad.double(), yd.grad, rtol=1e-4, atol=2e-6)


# ------------------------------------------------------------------ JANUS criterion
def janus_oracle(ar, nar, aux, ar_t, m_t, idx, w, eps=0.1, ignore=-100):
    """Independent composition with F.cross_entropy and F.kl_div (float64)."""
    ce = lambda z, t: F.cross_entropy(z.double(), t, label_smoothing=eps,  # noqa: E731
                                      ignore_index=ignore) if (t != ignore).any() \
        else z.sum() * 0.0
    valid = m_t != ignore
    n = max(int(valid.sum()), 1)
    kls = lambda a, b: (kl_oracle(a, b) * valid).sum() / n  # noqa: E731
    a_sel = ar[idx]
    terms = {"ar_ce": ce(ar, ar_t), "nar_ce": ce(nar, m_t), "aux_ce": ce(aux, m_t),
             "kl_ar_nar": kls(a_sel, nar), "kl_ar_aux": kls(a_sel, aux),
             "kl_nar_aux": kls(nar, aux)}
    total = sum(wt * terms[k] for k, wt in zip(L.LOSS_TERMS, w.as_tuple()))
    return total, terms


def janus_inputs(N=9, M=4, V=53, D=16, ignore_masked=True, dtype=torch.float32):
    torch.manual_seed(3)
    h = [torch.randn(n, D, dtype=dtype) for n in (N, M, M)]
    W = torch.randn(V, D, dtype=dtype) / 2
    ar_t = torch.randint(0, V, (N,))
    ar_t[-1] = -100
    m_t = torch.randint(0, V, (M,))
    if ignore_masked and M > 1:
        m_t[1] = -100
    idx = torch.sort(torch.randperm(N)[:M]).values
    return h, W, ar_t, m_t, idx


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("weights", [L.JanusLossWeights(), L.JanusLossWeights.paper()],
                         ids=["released", "paper"])
def test_janus_loss_matches_composition(backend, weights):
    (ha, hn, hx), W, ar_t, m_t, idx = janus_inputs()
    logits = [(h @ W.t()).requires_grad_() for h in (ha, hn, hx)]
    total, terms = L.janus_loss(*logits, ar_t, m_t, idx, weights=weights, backend=backend)
    (total * 1.3).backward()
    ref_logits = [z.detach().double().requires_grad_() for z in logits]
    rtotal, rterms = janus_oracle(*ref_logits, ar_t, m_t, idx, weights)
    (rtotal * 1.3).backward()
    torch.testing.assert_close(total.double(), rtotal, rtol=1e-5, atol=1e-6)
    for k in L.LOSS_TERMS:
        torch.testing.assert_close(terms[k].double(), rterms[k].double(), rtol=1e-5, atol=1e-6)
    for z, r in zip(logits, ref_logits):
        torch.testing.assert_close(z.grad.double(), r.grad, rtol=1e-4, atol=1e-7)
    # a bool AR-row mask gives the same result as the index form
    mask = torch.zeros(ha.shape[0], dtype=torch.bool)
    mask[idx] = True
    total2, _ = L.janus_loss(*[z.detach() for z in logits], ar_t, m_t, mask, weights=weights,
                             backend=backend)
    torch.testing.assert_close(total2, total.detach())


@pytest.mark.parametrize("backend", BACKENDS)
def test_janus_loss_empty_masked_set(backend):
    (ha, hn, hx), W, ar_t, m_t, idx = janus_inputs(M=0)
    logits = [(h @ W.t()).requires_grad_() for h in (ha, hn, hx)]
    total, terms = L.janus_loss(*logits, ar_t, m_t, idx, backend=backend)
    total.backward()
    for k in L.LOSS_TERMS[1:]:
        assert terms[k].item() == 0
    assert torch.isfinite(total) and torch.isfinite(logits[0].grad).all()
    # length term
    ll, lt = torch.randn(3, 10), torch.tensor([1, 2, 3])
    total2, terms2 = L.janus_loss(*[z.detach() for z in logits], ar_t, m_t, idx,
                                  length_logits=ll, length_targets=lt, backend=backend)
    torch.testing.assert_close(total2, total.detach() + 0.1 * F.cross_entropy(ll, lt))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("chunk_rows", [2, 1000])
@pytest.mark.parametrize("weights", [L.JanusLossWeights(), L.JanusLossWeights.paper()],
                         ids=["released", "paper"])
def test_fused_linear_janus_loss(backend, chunk_rows, weights):
    (ha, hn, hx), W, ar_t, m_t, idx = janus_inputs(N=11, M=5, V=67)
    leaves = [t.clone().requires_grad_() for t in (ha, hn, hx, W)]
    total, terms = L.fused_linear_janus_loss(*leaves, ar_t, m_t, idx, chunk_rows=chunk_rows,
                                             weights=weights, backend=backend)
    (total * 0.7).backward()
    refs = [t.double().requires_grad_() for t in (ha, hn, hx, W)]
    rtotal, rterms = janus_oracle(*[h @ refs[3].t() for h in refs[:3]], ar_t, m_t, idx,
                                  weights)
    (rtotal * 0.7).backward()
    torch.testing.assert_close(total.double(), rtotal, rtol=1e-5, atol=1e-6)
    for k in L.LOSS_TERMS:
        torch.testing.assert_close(terms[k].double(), rterms[k].double(), rtol=1e-5, atol=1e-6)
    for a, r in zip(leaves, refs):
        torch.testing.assert_close(a.grad.double(), r.grad, rtol=1e-4, atol=1e-6)
    with torch.no_grad():  # forward only: no gradient work, same value
        t2, _ = L.fused_linear_janus_loss(ha, hn, hx, W, ar_t, m_t, idx, weights=weights,
                                          backend=backend)
    torch.testing.assert_close(t2, total.detach())


def test_fused_linear_janus_loss_bf16():
    (ha, hn, hx), W, ar_t, m_t, idx = janus_inputs(N=7, M=3, V=300, D=32,
                                                   dtype=torch.bfloat16)
    leaves = [t.clone().requires_grad_() for t in (ha, hn, hx, W)]
    total, _ = L.fused_linear_janus_loss(*leaves, ar_t, m_t, idx, chunk_rows=2)
    total.backward()
    refs = [t.double().requires_grad_() for t in (ha, hn, hx, W)]
    logits = [(h @ refs[3].t()).to(torch.bfloat16).double() for h in refs[:3]]
    rtotal, _ = janus_oracle(*logits, ar_t, m_t, idx, L.JanusLossWeights())
    rtotal.backward()
    assert abs(total.item() - rtotal.item()) <= 2e-3 * abs(rtotal.item())
    for a, r in zip(leaves, refs):
        err = (a.grad.double() - r.grad).abs().max() / r.grad.abs().max()
        assert err < 3e-2, err


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_and_pos_inf_logits_give_nan(backend):
    x, y = torch.randn(3, 600), torch.randn(3, 600)
    x[0, 17] = float("nan")
    y[1, 555] = float("inf")
    rows = L.symmetric_kl(x, y, reduction="none", backend=backend)
    assert torch.isnan(rows[0]) and torch.isnan(rows[1]) and torch.isfinite(rows[2])
    ce = L.cross_entropy(x, torch.tensor([1, 2, 3]), label_smoothing=0.1, reduction="none",
                         backend=backend)
    assert torch.isnan(ce[0]) and torch.isfinite(ce[1:]).all()


def assert_symkl_ce_cpp_matches_reference(x, y, mask, t):
    """symmetric_kl(x, y) + label-smoothed cross_entropy(x, t): the loss and both logit
    gradients of the C++ backend against the reference backend."""
    out = {}
    for be in ("cpu", "reference"):
        xr, yr = x.clone().requires_grad_(), y.clone().requires_grad_()
        loss = L.symmetric_kl(xr, yr, row_mask=mask, backend=be) + \
            L.cross_entropy(xr, t, label_smoothing=0.1, backend=be)
        loss.backward()
        out[be] = (loss.detach(), xr.grad, yr.grad)
    for a, b in zip(out["cpu"], out["reference"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-9)


@pytest.mark.skipif(not _ext.available(), reason="extension not built")
def test_cpp_multi_mib_outputs_match_reference():
    """Gradients of a few MiB take the prefault / threaded path of the C++ backward."""
    R, V = 24, 32003
    x, y = torch.randn(R, V) * 2, torch.randn(R, V) * 2
    mask = torch.arange(R) % 5 != 0
    t = torch.randint(0, V, (R,))
    t[3] = -100
    assert_symkl_ce_cpp_matches_reference(x, y, mask, t)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("chunk_rows", [1, 3, 1000])
def test_fused_linear_janus_loss_unsorted_kl_rows(backend, chunk_rows):
    """KL rows out of order take the two-pass chunking, sorted ones the aligned pass: both
    equal the oracle, and an ignored AR row that a valid masked row's KL reads is read."""
    (ha, hn, hx), W, ar_t, m_t, idx = janus_inputs(N=13, M=6, V=67)
    ar_t[idx[0]] = -100   # ignored by its CE, still read by the KL terms of masked row 0
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    for order in (torch.arange(6), perm):
        h_n, h_x, t_m, kl = hn[order], hx[order], m_t[order], idx[order]
        leaves = [t.clone().requires_grad_() for t in (ha, h_n, h_x, W)]
        total, terms = L.fused_linear_janus_loss(*leaves, ar_t, t_m, kl, chunk_rows=chunk_rows,
                                                 backend=backend)
        (total * 0.9).backward()
        refs = [t.double().requires_grad_() for t in (ha, h_n, h_x, W)]
        rtotal, rterms = janus_oracle(*[h @ refs[3].t() for h in refs[:3]], ar_t, t_m, kl,
                                      L.JanusLossWeights())
        (rtotal * 0.9).backward()
        torch.testing.assert_close(total.double(), rtotal, rtol=1e-5, atol=1e-6)
        for a, r in zip(leaves, refs):
            torch.testing.assert_close(a.grad.double(), r.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("chunk_rows", [1, 4, 1000])
def test_fused_linear_cross_entropy(backend, chunk_rows):
    torch.manual_seed(5)
    h, W = torch.randn(11, 16), torch.randn(53, 16) / 2
    t = torch.randint(0, 53, (11,))
    t[4] = -100
    h[4] = float("nan")   # an ignored row is never read
    leaves = [h.clone().requires_grad_(), W.clone().requires_grad_()]
    loss = L.fused_linear_cross_entropy(*leaves, t, label_smoothing=0.1, chunk_rows=chunk_rows,
                                        backend=backend)
    (loss * 1.7).backward()
    keep = t != -100
    refs = [h[keep].double().requires_grad_(), W.double().requires_grad_()]
    ref = F.cross_entropy(refs[0] @ refs[1].t(), t[keep], label_smoothing=0.1)
    (ref * 1.7).backward()
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(leaves[0].grad[keep].double(), refs[0].grad, rtol=1e-4, atol=1e-6)
    assert (leaves[0].grad[~keep] == 0).all()
    torch.testing.assert_close(leaves[1].grad.double(), refs[1].grad, rtol=1e-4, atol=1e-6)
