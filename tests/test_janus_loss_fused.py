"""The fused JANUS criterion rows op (csrc/cpu/janus_loss.cpp, used by ``janus_loss`` on CPU
with the "cpu" backend) against the float64 F.cross_entropy / F.kl_div oracle (tolerance rule
of COMMON.md: error <= 2x, gradients 3x, the oracle's own error in the input precision) and
against the composition of the separate ops (same special-value rules, same NaN pattern)."""
import pytest
import torch

from janus_kernels import _ext
from janus_kernels import losses as L
from test_losses import assert_symkl_ce_cpp_matches_reference, check, janus_oracle
from _loss_cases import CPU_SIZES, JANUS_CASES, JanusCase, params

pytestmark = [pytest.mark.skipif(not _ext.available(), reason="extension not built"),
              pytest.mark.usefixtures("cpu_isa_level")]   # once per CPU ISA level

RELEASED, PAPER = L.JanusLossWeights(), L.JanusLossWeights.paper()
ONLY_KL = L.JanusLossWeights(0.0, 0.0, 0.0, 1.0, 0.0, 0.0)


def make_case(N, M, V, *, dtype=torch.float32, scale=3.0, seed=0, ignore=(), ignore_ar=(),
              dup=False, sorted_idx=False, dup_ar_ignored=False):
    g = torch.Generator().manual_seed(seed)
    logits = [(torch.randn(n, V, generator=g, dtype=torch.float64) * scale).to(dtype)
              for n in (N, M, M)]
    ar_t = torch.randint(0, V, (N,), generator=g)
    m_t = torch.randint(0, V, (M,), generator=g)
    for i in ignore:
        m_t[i] = -100
    for i in ignore_ar:
        ar_t[i] = -100
    idx = torch.randperm(N, generator=g)[:M]
    if sorted_idx:
        idx = idx.sort().values
    if dup and M >= 3:
        idx[2] = idx[0]
        idx[-1] = idx[0]
    if dup_ar_ignored:
        ar_t[idx[0]] = -100  # an AR row with claims but no CE of its own
    return logits, ar_t, m_t, idx


def make_table_case(case: JanusCase, dtype=torch.float32):
    """Inputs of a case of the one loss table (_loss_cases.JANUS_CASES)."""
    return make_case(case.N, case.M, case.V, dtype=dtype, ignore=case.ignore,
                     ignore_ar=case.ignore_ar, dup=case.dup, dup_ar_ignored=case.dup_ar_ignored)


def fused_and_grads(logits, ar_t, m_t, idx, weights, scale=1.3, composed=False):
    xs = [z.detach().clone().requires_grad_() for z in logits]
    fn = L._janus_terms_composed if composed else L._janus_terms_fused
    terms = fn(*xs, ar_t, m_t, idx, 0.1, -100, "cpu")
    total = sum(w * terms[k] for k, w in zip(L.LOSS_TERMS, weights.as_tuple()) if w != 0)
    (total * scale).backward()
    return total.detach(), {k: v.detach() for k, v in terms.items()}, [z.grad for z in xs]


def oracle_and_grads(logits, ar_t, m_t, idx, weights, dtype, scale=1.3):
    xs = [z.detach().to(dtype).requires_grad_() for z in logits]
    total, terms = janus_oracle(*xs, ar_t, m_t, idx, weights)
    (total * scale).backward()
    return total.detach(), terms, [z.grad for z in xs]


def assert_matches_oracle(total, terms, grads, logits, ar_t, m_t, idx, weights, dtype):
    """A JANUS-loss result (total, per-term values, logit gradients) against the float64
    oracle, with the error budget from the same oracle in the input precision: values within
    2x of its error, gradients within 3x (floors for exact zeros and 16-bit rounding)."""
    acc_total, acc_terms, acc_grads = oracle_and_grads(logits, ar_t, m_t, idx, weights,
                                                       torch.float64)
    # the same oracle in the input precision (fp16 log_softmax is CPU-supported in fp32 math;
    # fp16 softmax autograd is not, so fp16 gradients use the floor alone)
    same = torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype
    same_total, same_terms, _ = oracle_and_grads(logits, ar_t, m_t, idx, weights, same)
    same_grads = oracle_and_grads([z.to(dtype) for z in logits], ar_t, m_t, idx, weights,
                                  dtype)[2] if dtype != torch.float16 else acc_grads
    check(total.reshape(1), acc_total.reshape(1), same_total.reshape(1).double(), 2, floor=1e-6)
    for k in L.LOSS_TERMS:
        check(terms[k].reshape(1), acc_terms[k].detach().reshape(1),
              same_terms[k].detach().reshape(1).double(), 2, floor=1e-6)
    for got, acc, ref in zip(grads, acc_grads, same_grads):
        assert got.dtype == dtype and got.shape == acc.shape
        if acc.numel() and acc.abs().max() == 0:  # e.g. V = 1: exact zeros, up to rounding
            assert got.double().abs().max() <= 1e-12
            continue
        floor = 1e-6 if dtype in (torch.float32, torch.float64) else 1e-2
        check(got, acc, ref.double(), 3, floor=floor)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64],
                         ids=str)
@pytest.mark.parametrize("case", params(JANUS_CASES, CPU_SIZES))   # the one loss case table
@pytest.mark.parametrize("weights", [RELEASED, PAPER], ids=["released", "paper"])
def test_fused_rows_match_oracle(dtype, case, weights):
    logits, ar_t, m_t, idx = make_table_case(case, dtype)
    total, terms, grads = fused_and_grads(logits, ar_t, m_t, idx, weights)
    assert_matches_oracle(total, terms, grads, logits, ar_t, m_t, idx, weights, dtype)


@pytest.mark.parametrize("dup", [False, True])
def test_fused_equals_composed_ops(dup):
    """Same numbers as the separate cross_entropy / symmetric_kl ops (fp32, V = 32003: the
    vector body, the tails, and multi-MiB gradient rows on the prefault path)."""
    logits, ar_t, m_t, idx = make_case(40, 17, 32003, ignore=(5,), ignore_ar=(1, 9), dup=dup)
    a = fused_and_grads(logits, ar_t, m_t, idx, RELEASED)
    b = fused_and_grads(logits, ar_t, m_t, idx, RELEASED, composed=True)
    torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-6)
    for k in L.LOSS_TERMS:
        torch.testing.assert_close(a[1][k], b[1][k], rtol=1e-5, atol=1e-6)
    for ga, gb in zip(a[2], b[2]):
        torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-9)


def test_neg_inf_rules_match_composed():
    """-inf in the AR row only: KL(AR, NAR) and KL(AR, AUX) are infinite, so with non-zero
    weights the AR, NAR and AUX gradient rows of that triple are NaN, like the separate ops;
    with a zero weight on the infinite terms nothing is poisoned. -inf on all three rows at
    one entry is the 0 log 0 = 0 case: finite everywhere."""
    logits, ar_t, m_t, idx = make_case(6, 3, 50)
    r = int(idx[1])
    logits[0][r, 7] = float("-inf")
    for k in range(3):  # entry 9 is -inf in all three rows of masked row 2
        logits[k][int(idx[2]) if k == 0 else 2, 9] = float("-inf")
    ar_t[r] = 3
    for w in (RELEASED, L.JanusLossWeights(1.0, 0.5, 0.5, 0.0, 0.0, 1.0)):
        a = fused_and_grads(logits, ar_t, m_t, idx, w)
        b = fused_and_grads(logits, ar_t, m_t, idx, w, composed=True)
        for k in L.LOSS_TERMS:
            torch.testing.assert_close(a[1][k], b[1][k], rtol=1e-5, atol=1e-6, equal_nan=True)
        for ga, gb in zip(a[2], b[2]):
            assert torch.equal(torch.isnan(ga), torch.isnan(gb))
            torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-7, equal_nan=True)
        if w is RELEASED:
            assert torch.isnan(a[2][0][r]).all() and torch.isnan(a[2][1][1]).all()
        else:
            assert all(torch.isfinite(g).all() for g in a[2])


def test_zero_weight_term_has_no_gradient():
    logits, ar_t, m_t, idx = make_case(8, 4, 33)
    _, _, grads = fused_and_grads(logits, ar_t, m_t, idx, ONLY_KL)
    _, _, ref = oracle_and_grads(logits, ar_t, m_t, idx, ONLY_KL, torch.float64)
    for g, r in zip(grads, ref):
        torch.testing.assert_close(g.double(), r, rtol=1e-4, atol=1e-7)
    assert grads[2].abs().max() == 0  # AUX appears in no weighted term


def test_janus_loss_uses_fused_path_and_keeps_inputs(monkeypatch):
    logits, ar_t, m_t, idx = make_case(9, 4, 61, ignore=(2,))
    before = [z.clone() for z in logits]
    xs = [z.clone().requires_grad_() for z in logits]
    composed = L._janus_terms_composed

    def no_composed(*a):
        raise AssertionError("janus_loss took the composed path")
    monkeypatch.setattr(L, "_janus_terms_composed", no_composed)
    total, _ = L.janus_loss(*xs, ar_t, m_t, idx, backend="cpu")
    monkeypatch.setattr(L, "_janus_terms_composed", composed)
    total.backward()
    assert all(torch.equal(z, b) for z, b in zip(logits, before))
    ref = fused_and_grads(logits, ar_t, m_t, idx, RELEASED, scale=1.0)
    for g, r in zip([z.grad for z in xs], ref[2]):
        torch.testing.assert_close(g, r)
    mixed = [xs[0].detach().double(), xs[1].detach(), xs[2].detach()]
    with pytest.raises(TypeError, match="share a dtype"):
        L.janus_loss(*mixed, ar_t, m_t, idx, backend="cpu")


def test_bad_arguments_name_the_argument():
    logits, ar_t, m_t, idx = make_case(5, 3, 11)
    ar, nar, aux = logits
    bad = idx.clone()
    bad[0] = 5
    with pytest.raises(RuntimeError, match="ar_kl_rows"):
        torch.ops.janus.janus_rows_fwd(ar, nar, aux, ar_t, m_t, bad, 0.1, -100)
    with pytest.raises(RuntimeError, match="target"):
        torch.ops.janus.janus_rows_fwd(ar, nar, aux, ar_t, m_t.clone().fill_(11), idx, 0.1,
                                       -100)
    with pytest.raises(RuntimeError, match="aux_logits"):
        torch.ops.janus.janus_rows_fwd(ar, nar, aux[:, :5], ar_t, m_t, idx, 0.1, -100)
    with pytest.raises(RuntimeError, match="label_smoothing"):
        torch.ops.janus.janus_rows_fwd(ar, nar, aux, ar_t, m_t, idx, 1.5, -100)
    with pytest.raises(ValueError, match="ar_kl_rows"):
        L.janus_loss(ar, nar, aux, ar_t, m_t, idx[:2], backend="cpu")


def test_opcheck_and_compile():
    logits, ar_t, m_t, idx = make_case(7, 3, 37, ignore=(1,), dup=True)
    xs = tuple(z.clone().requires_grad_() for z in logits)
    torch.library.opcheck(torch.ops.janus.janus_rows, xs + (ar_t, m_t, idx, 0.1, -100, "cpu"))
    f = torch.compile(lambda a, b, c: L.janus_loss(a, b, c, ar_t, m_t, idx, backend="cpu")[0],
                      fullgraph=True)
    out = f(*xs)
    out.backward()
    ref = fused_and_grads(logits, ar_t, m_t, idx, RELEASED, scale=1.0)
    torch.testing.assert_close(out.detach(), ref[0])
    for z, r in zip(xs, ref[2]):
        torch.testing.assert_close(z.grad, r)


hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(N=st.integers(1, 9), frac=st.floats(0, 1), V=st.integers(1, 90),
                  scale=st.floats(0.01, 40.0), seed=st.integers(0, 2 ** 16),
                  dup=st.booleans(), p_ign=st.floats(0, 0.6))
def test_fuzz_fused_against_oracle(N, frac, V, scale, seed, dup, p_ign):
    M = int(round(frac * N))
    g = torch.Generator().manual_seed(seed)
    ign = [i for i in range(M) if torch.rand(1, generator=g).item() < p_ign]
    ign_ar = [i for i in range(N) if torch.rand(1, generator=g).item() < p_ign]
    logits, ar_t, m_t, idx = make_case(N, M, V, scale=scale, seed=seed, ignore=ign,
                                       ignore_ar=ign_ar, dup=dup)
    # Against the float64 oracle, the fp32 oracle's own error as the yardstick, plus an
    # absolute floor from the kernels' fast exp (~2e-7 relative): every gradient entry is a
    # sum of terms bounded by (sum of weights = 7) x (1 + |d|), d = t_p - t_q up to the logit
    # spread (at spread ~175 the kernel is ~4e-6 off where log_softmax in fp32 is ~3e-8 off).
    spread = max([float(z.max() - z.min()) for z in logits if z.numel()] + [0.0])
    abs_floor = 2e-7 * 7 * (1.0 + spread)

    def floor(acc):  # check() scales its floor by the reference's magnitude
        return abs_floor / max(float(acc.abs().max()) if acc.numel() else 0.0, 1e-30)
    total, _, grads = fused_and_grads(logits, ar_t, m_t, idx, RELEASED)
    acc_total, _, acc_grads = oracle_and_grads(logits, ar_t, m_t, idx, RELEASED, torch.float64)
    same_total, _, same_grads = oracle_and_grads(logits, ar_t, m_t, idx, RELEASED,
                                                 torch.float32)
    check(total.reshape(1), acc_total.reshape(1), same_total.reshape(1).double(), 2,
          floor=floor(acc_total.reshape(1)))
    for got, acc, ref in zip(grads, acc_grads, same_grads):
        if acc.numel() and acc.abs().max() == 0:
            assert got.double().abs().max() <= 1e-12
            continue
        check(got, acc, ref.double(), 3, floor=floor(acc))


def test_symkl_bwd_into_matches_allocating_op():
    """The benchmark-only raw op that writes into caller buffers gives the same gradients."""
    x, y = torch.randn(5, 1031), torch.randn(5, 1031)
    mask = torch.tensor([True, False, True, True, True])
    loss, st = torch.ops.janus.symkl_rows_fwd(x, y, mask, 1.0)
    g = torch.rand(5)
    dx, dy = torch.ops.janus.symkl_rows_bwd(g, x, y, st, mask, 1.0)
    ox, oy = torch.full_like(x, 7.0), torch.full_like(y, 7.0)
    torch.ops.janus.symkl_rows_bwd_into(g, x, y, st, mask, 1.0, ox, oy)
    assert torch.equal(ox, dx) and torch.equal(oy, dy)
    with pytest.raises(RuntimeError, match="grad_p_out"):
        torch.ops.janus.symkl_rows_bwd_into(g, x, y, st, mask, 1.0, ox[:, :5], oy)


def test_pooled_gradient_blocks_are_fully_rewritten():
    """Gradients of >= 8 MiB come from the output pool (reused blocks hold stale values):
    every element must be written again, for every op and mask pattern, and empty_cache()
    releases the blocks."""
    R, V = 72, 32003                                     # 9.2 MB per fp32 gradient
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(R, V, generator=g), torch.randn(R, V, generator=g)
    t = torch.randint(0, V, (R,), generator=g)
    for rep in range(3):                                 # reuse blocks of the previous round
        mask = torch.rand(R, generator=g) > 0.4
        tt = torch.where(torch.rand(R, generator=g) > 0.3, t, torch.full_like(t, -100))
        assert_symkl_ce_cpp_matches_reference(x, y, mask, tt)
        logits, ar_t, m_t, idx = make_case(R, R // 2, V, seed=rep, ignore=(0, 3), dup=rep == 1)
        a = fused_and_grads(logits, ar_t, m_t, idx, RELEASED)
        b = fused_and_grads(logits, ar_t, m_t, idx, RELEASED, composed=True)
        for ga, gb in zip(a[2], b[2]):
            torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-9)
        del a, b
    assert L.empty_cache() > 0
    assert L.empty_cache() == 0
