"""Triton fused JANUS criterion rows (janus_kernels/triton/janus_loss.py) under TRITON_INTERPRET=1
on CPU tensors: the raw op against the CPU C++ op (torch.ops.janus.janus_rows_fwd/bwd, the tested
reference) on awkward shapes, ``janus_loss(backend="triton")`` end to end against the float64
F.cross_entropy / F.kl_div oracle (COMMON.md rule: error <= 2x the same-precision oracle's own
error, 3x for gradients), the -inf / zero-weight / ignored / duplicate-row rules,
``fused_linear_janus_loss(backend="triton")``, and an AOT compile of both kernels for sm_80 /
sm_90 without spills (compile_check)."""
import os

import pytest
import torch

pytest.importorskip("triton")

from janus_kernels import _ext  # noqa: E402
# the raw janus:: CPU entries (torch.ops.janus.janus_rows_* on CPU tensors, the reference here)
# are registered when the CPU backend module loads; janus_kernels loads backends lazily
import janus_kernels.backends.cpu  # noqa: E402,F401
from janus_kernels import losses as L  # noqa: E402
from test_janus_loss_fused import (ONLY_KL, PAPER, RELEASED,  # noqa: E402
                                   assert_matches_oracle, make_case, oracle_and_grads)
from _triton_aot_utils import run_aot_script  # noqa: E402
from test_losses import janus_inputs  # noqa: E402
from _loss_cases import CPU_SIZES, JANUS_CASES, SLOW_SIZES, JanusCase, params  # noqa: E402

INTERP = os.environ.get("TRITON_INTERPRET") == "1"
needs_interp = pytest.mark.skipif(not INTERP, reason="needs TRITON_INTERPRET=1 (CPU tensors)")
#: The raw rows ops run compiled on a GPU (inputs moved there, results back) or interpreted.
needs_triton = pytest.mark.skipif(not INTERP and not torch.cuda.is_available(),
                                  reason="needs TRITON_INTERPRET=1 or a GPU")
TRITON_DEV = "cpu" if INTERP else "cuda"


def _on_triton_device(fn, *args):
    """fn(*args) with tensor args on the Triton device; tensor results back on the CPU."""
    out = fn(*[a.to(TRITON_DEV) if isinstance(a, torch.Tensor) else a for a in args])
    return tuple(o.cpu() if isinstance(o, torch.Tensor) else o for o in out)
needs_ext = pytest.mark.skipif(not _ext.available(), reason="extension not built")
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy in the interpreter
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 256 so that V = 1271 takes 5 online forward steps and 5 column blocks."""
    from janus_kernels.triton import janus_loss as J
    from janus_kernels.triton import loss as tri
    for mod in (J, tri):
        monkeypatch.setattr(mod, "_FWD_BLOCK", 256)
        monkeypatch.setattr(mod, "_BWD_BLOCK", 256)


def case(N, M, V, dtype=torch.float32, ign=(), ign_ar=(), dup=False, ar_of_dup_ignored=False,
         seed=0):
    logits, ar_t, m_t, idx = make_case(N, M, V, dtype=dtype, ignore=ign, ignore_ar=ign_ar,
                                       dup=dup, seed=seed, dup_ar_ignored=ar_of_dup_ignored)
    logits[0][:, : V // 2] += 4.0  # the running max grows across blocks: the rescale path
    return logits, ar_t, m_t, idx


def table_case(jc: JanusCase, dtype=torch.float32):
    """Inputs of a case of the one loss table (_loss_cases.JANUS_CASES)."""
    return case(jc.N, jc.M, jc.V, dtype, jc.ignore, jc.ignore_ar, jc.dup, jc.dup_ar_ignored)


#: the loss table's size classes: the interpreter takes the SMALL cases, a GPU all of them
SIZES = SLOW_SIZES if INTERP else CPU_SIZES


def upstream(N, M, seed=1):
    g = torch.Generator().manual_seed(seed)
    g_ar = torch.rand(N, generator=g) + 0.5
    g_m = torch.rand(M, 5, generator=g) + 0.5
    g_m[::3, 2] = 0  # zero upstream gradients: those terms are dropped from the backward
    g_m[1::4, 4] = 0
    return g_ar, g_m


def assert_rows_close(got, ref, rtol, floor):
    """Elementwise |got - ref| <= rtol |ref| + floor max|ref| (+1e-12), same NaN / inf entries."""
    assert got.shape == ref.shape and got.dtype == ref.dtype
    assert torch.equal(torch.isnan(got), torch.isnan(ref)), "NaN pattern differs"
    inf = torch.isinf(ref)
    assert torch.equal(got[inf], ref[inf]) and not torch.isinf(got[~inf]).any(), "inf differs"
    ok = torch.isfinite(ref)
    g, r = got[ok].double(), ref[ok].double()
    if r.numel() == 0:
        return
    bound = rtol * r.abs() + floor * r.abs().max().item() + 1e-12  # V = 1: exact 0 vs ~1e-16
    err = (g - r).abs() - bound
    assert err.max().item() <= 0, f"max excess {err.max().item():.3g} (rtol {rtol}, floor {floor})"


def ulp(dtype):  # one rounding of the output dtype: two correct kernels may differ by that
    return {torch.bfloat16: 2.0 ** -7, torch.float16: 2.0 ** -10}.get(dtype, 2e-5)


# ------------------------------------------------------------- raw op vs the C++ op
@needs_triton
@needs_ext
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("jc", params(JANUS_CASES, SIZES))   # the one loss case table
def test_raw_rows_match_cpp_op(small_blocks, dtype, jc):
    from janus_kernels.triton import janus_loss as J
    N, M = jc.N, jc.M
    logits, ar_t, m_t, idx = table_case(jc, dtype)
    before = [z.clone() for z in logits]
    got = _on_triton_device(J.janus_rows_fwd, *logits, ar_t, m_t, idx, 0.1, -100)
    ref = torch.ops.janus.janus_rows_fwd(*logits, ar_t, m_t, idx, 0.1, -100)
    for g, r in zip(got[:2], ref[:2]):  # losses: both accumulate in fp32 from the same inputs
        assert_rows_close(g, r, 2e-5, 2e-6)
    assert_rows_close(got[3], ref[3], 2e-5, 2e-6)  # masked stats, zeros for ignored rows
    # AR stats are private to a backend: they agree wherever the AR row has its own CE (an AR
    # row with an ignored target keeps the stats of its first *valid* claim here)
    valid_ar = ar_t != -100
    assert_rows_close(got[2][valid_ar], ref[2][valid_ar], 2e-5, 2e-6)
    g_ar, g_m = upstream(N, M)
    grads = _on_triton_device(J.janus_rows_bwd, g_ar, g_m, *logits, ar_t, m_t, idx, got[2],
                              got[3], 0.1, -100)
    refs = torch.ops.janus.janus_rows_bwd(g_ar, g_m, *logits, ar_t, m_t, idx, ref[2], ref[3],
                                          0.1, -100)
    # the C++ op in float64 on the same (rounded) inputs, rounded once to the output dtype:
    # the Triton gradients are within one rounding of it everywhere
    lg64 = [z.double() for z in logits]
    st64 = torch.ops.janus.janus_rows_fwd(*lg64, ar_t, m_t, idx, 0.1, -100)
    exact = torch.ops.janus.janus_rows_bwd(g_ar.double(), g_m.double(), *lg64, ar_t, m_t, idx,
                                           st64[2], st64[3], 0.1, -100)
    for g, e in zip(grads, exact):
        assert_rows_close(g, e.to(dtype), ulp(dtype), 1e-6)
    # the same-dtype C++ op adds each extra claim into its AR gradient row in the output dtype
    # (one rounding per claim); Triton accumulates in fp32 and rounds once: compare the rest
    dup_rows = torch.zeros(N, dtype=torch.bool)
    dup_rows[idx[m_t != -100]] = torch.bincount(idx[m_t != -100], minlength=N)[
        idx[m_t != -100]] > 1
    assert_rows_close(grads[0][~dup_rows], refs[0][~dup_rows], ulp(dtype), 1e-6)
    for g, r in zip(grads[1:], refs[1:]):
        assert_rows_close(g, r, ulp(dtype), 1e-6)
    if M:
        assert torch.all(grads[1][m_t == -100] == 0) and torch.all(grads[2][m_t == -100] == 0)
    assert all(torch.equal(z, b) for z, b in zip(logits, before))


# ----------------------------------------------------- end to end vs the fp64 oracle
def triton_and_grads(logits, ar_t, m_t, idx, weights, scale=1.3):
    xs = [z.detach().clone().requires_grad_() for z in logits]
    total, terms = L.janus_loss(*xs, ar_t, m_t, idx, weights=weights, backend="triton")
    (total * scale).backward()
    return total.detach(), {k: v.detach() for k, v in terms.items()}, [z.grad for z in xs]


@needs_interp
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("jc", params(JANUS_CASES, SIZES))   # the one loss case table
def test_janus_loss_triton_matches_oracle(small_blocks, monkeypatch, dtype, jc):
    def no_composed(*a):
        raise AssertionError("janus_loss took the composed path")
    monkeypatch.setattr(L, "_janus_terms_composed", no_composed)
    weights = PAPER if dtype == torch.float16 else RELEASED
    logits, ar_t, m_t, idx = table_case(jc, dtype)
    total, terms, grads = triton_and_grads(logits, ar_t, m_t, idx, weights)
    assert_matches_oracle(total, terms, grads, logits, ar_t, m_t, idx, weights, dtype)


@needs_interp
def test_fp64_gradcheck_with_duplicates():
    """Independent of both references: finite differences in float64 through janus_loss."""
    logits, ar_t, m_t, idx = case(6, 4, 23, torch.float64, ign=(1,), dup=True)
    xs = tuple(z.clone().requires_grad_() for z in logits)
    f = lambda a, n, x: L.janus_loss(a, n, x, ar_t, m_t, idx, weights=PAPER,  # noqa: E731
                                     backend="triton")[0]
    assert torch.autograd.gradcheck(f, xs, fast_mode=True)


@needs_interp
def test_opcheck_triton_backend():
    """Schema, fake (meta) implementation and autograd registration of janus::janus_rows
    agree with the Triton implementation (duplicates and an ignored masked row included)."""
    logits, ar_t, m_t, idx = case(7, 3, 37, ign=(1,), dup=True)
    xs = tuple(z.clone().requires_grad_() for z in logits)
    torch.library.opcheck(torch.ops.janus.janus_rows, xs + (ar_t, m_t, idx, 0.1, -100, "triton"))


# ------------------------------------------------------------------ special values
@needs_interp
@needs_ext
@pytest.mark.parametrize("eps", [0.1, 0.0])
def test_neg_inf_rules_match_cpp(small_blocks, eps):
    """-inf in one AR row only: KL(AR, NAR) and KL(AR, AUX) of its claim are +inf and, when
    weighted, that claim's three gradient rows are NaN; a zero weight on those terms keeps
    everything finite. -inf at one entry of all three rows of another triple is 0 log 0 = 0:
    finite. One-hot NAR / AUX rows (infinite KLs with their AR row, finite between them) and
    duplicate claims on the infinite AR row ride along."""
    from janus_kernels.triton import janus_loss as J
    logits, ar_t, m_t, idx = make_case(8, 5, 300, dup=True)  # idx[2] == idx[4] == idx[0]
    r_inf, r_00 = int(idx[0]), int(idx[1])
    logits[0][r_inf, 7] = float("-inf")
    for k in range(3):
        logits[k][r_00 if k == 0 else 1, 9] = float("-inf")
    logits[1][3, 1:] = logits[2][3, 1:] = float("-inf")  # one-hot NAR and AUX softmaxes
    m_t[3] = 0
    ar_t[r_inf] = 3
    fwd = J.janus_rows_fwd(*logits, ar_t, m_t, idx, eps, -100)
    ref = torch.ops.janus.janus_rows_fwd(*logits, ar_t, m_t, idx, eps, -100)
    assert_rows_close(fwd[1], ref[1], 2e-5, 2e-6)
    assert_rows_close(fwd[0], ref[0], 2e-5, 2e-6)
    assert torch.isinf(fwd[1][[0, 2, 4]][:, 2:4]).all()  # the claims on the -inf AR row
    assert torch.isfinite(fwd[1][1, 2:]).all()           # 0 log 0: finite KLs
    assert torch.isinf(fwd[1][1, :2]).all() == (eps > 0)  # smoothing averages -log p over -inf
    for zero_kl in (False, True):
        g_ar, g_m = upstream(8, 5)
        if zero_kl:
            g_m[:, 2:4] = 0  # the infinite terms carry no weight: nothing is poisoned
        got = J.janus_rows_bwd(g_ar, g_m, *logits, ar_t, m_t, idx, fwd[2], fwd[3], eps, -100)
        exp = torch.ops.janus.janus_rows_bwd(g_ar, g_m, *logits, ar_t, m_t, idx, ref[2], ref[3],
                                             eps, -100)
        for g, r in zip(got, exp):
            assert_rows_close(g, r, 2e-5, 1e-6)
        if zero_kl:
            assert all(torch.isfinite(g).all() for g in got)
        else:
            assert torch.isnan(got[0][r_inf]).all()
            claims = [0, 2, 4]
            assert torch.isnan(got[2][claims]).all()  # KLs(AR, AUX) weighted everywhere
            # KLs(AR, NAR) has a zero upstream gradient on row 0: its NAR row stays finite
            assert torch.equal(torch.isnan(got[1][claims]).all(1), g_m[claims, 2] != 0)
            assert torch.isfinite(got[1][0]).all()
            assert torch.isfinite(got[0][r_00]).all() and torch.isfinite(got[1][1]).all()


@needs_interp
def test_zero_weight_terms_and_padding_never_read(small_blocks):
    """Only KLs(AR, NAR) weighted: the AUX gradient is exactly 0. Ignored masked rows and AR
    rows with an ignored target and no claim may hold NaN padding: never read."""
    logits, ar_t, m_t, idx = case(8, 4, 33, ign=(2,))
    free = [r for r in range(8) if r not in idx.tolist()][0]
    ar_t[free] = -100
    for z in logits[1:]:
        z[2] = float("nan")
    logits[0][free] = float("nan")
    _, terms, grads = triton_and_grads(logits, ar_t, m_t, idx, ONLY_KL, scale=1.0)
    clean = [z.clone() for z in logits]
    for z in clean:
        z.nan_to_num_(0.0)
    _, acc_terms, ref = oracle_and_grads(clean, ar_t, m_t, idx, ONLY_KL, torch.float64, 1.0)
    for k in L.LOSS_TERMS:
        torch.testing.assert_close(terms[k].double(), acc_terms[k].detach(), rtol=1e-5,
                                   atol=1e-6)
    for g, r in zip(grads, ref):
        torch.testing.assert_close(g.double(), r, rtol=1e-4, atol=1e-7)
    assert grads[2].abs().max() == 0
    assert grads[0][free].abs().max() == 0 and grads[1][2].abs().max() == 0


@needs_interp
def test_bad_arguments_name_the_argument():
    from janus_kernels.triton import janus_loss as J
    logits, ar_t, m_t, idx = make_case(5, 3, 11)
    bad = idx.clone()
    bad[0] = 5
    with pytest.raises(ValueError, match="ar_kl_rows"):
        J.janus_rows_fwd(*logits, ar_t, m_t, bad, 0.1, -100)
    with pytest.raises(ValueError, match="masked_targets"):
        J.janus_rows_fwd(*logits, ar_t, m_t.clone().fill_(11), idx, 0.1, -100)
    with pytest.raises(ValueError, match="aux_logits"):
        J.janus_rows_fwd(logits[0], logits[1], logits[2][:, :5], ar_t, m_t, idx, 0.1, -100)
    with pytest.raises(ValueError, match="label_smoothing"):
        J.janus_rows_fwd(*logits, ar_t, m_t, idx, 1.5, -100)
    with pytest.raises(ValueError, match="masked_stats"):
        J.janus_rows_bwd(torch.ones(5), torch.ones(3, 5), *logits, ar_t, m_t, idx,
                         torch.ones(5, 2), torch.ones(3, 11), 0.1, -100)


# ------------------------------------------------------------------ fused linear
@needs_interp
@needs_ext
def test_fused_linear_janus_loss_triton(monkeypatch):
    """The masked chunks go through the Triton rows op (not the composed one) and give the
    C++ fused path's numbers, and the reference backend's."""
    import janus_kernels.fused_linear as FL
    monkeypatch.setattr(FL, "_masked_rows_composed", None)  # would raise if taken
    (ha, hn, hx), W, ar_t, m_t, idx = janus_inputs(N=7, M=4, V=150)
    out = {}
    for be in ("triton", "cpu", "reference"):
        if be == "reference":
            monkeypatch.undo()
        leaves = [t.clone().requires_grad_() for t in (ha, hn, hx, W)]
        total, terms = L.fused_linear_janus_loss(*leaves, ar_t, m_t, idx, chunk_rows=3,
                                                 backend=be)
        (1.7 * total).backward()
        out[be] = [total.detach()] + [terms[k] for k in L.LOSS_TERMS] + [t.grad for t in leaves]
    for be in ("cpu", "reference"):
        for a, b in zip(out["triton"], out[be]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- AOT compile check
_AOT_SCRIPT = r"""
import json, os
os.environ["TRITON_INTERPRET"] = "0"
import triton
from triton.compiler import ASTSource
from triton.backends.compiler import GPUTarget
from janus_kernels.triton import janus_loss as J
from janus_kernels.triton.aot import resource_usage

res = []
for dt in ("bf16", "fp16", "fp32", "fp64"):
    a = "fp64" if dt == "fp64" else "fp32"  # loss / stats / upstream-gradient dtype
    types = {"A": dt, "NR": dt, "XR": dt, "DA": dt, "DN": dt, "DX": dt, "COUNT": "i32",
             "TA": "i64", "TM": "i64", "IDX": "i64", "ORDER": "i64", "OFFS": "i64"}
    for name, const in (("janus_fwd", {"SMOOTH": True, "BLOCK": J._FWD_BLOCK}),
                        ("janus_bwd", {"BLOCK": J._BWD_BLOCK})):
        const = dict(const, IS_F64=dt == "fp64")
        fn = J.KERNELS[name]
        sig, attrs = {}, {}
        for i, arg in enumerate(fn.arg_names):
            if arg in const:
                sig[arg] = "constexpr"
            elif arg in ("N", "ignore_index"):
                sig[arg] = "i32"
            else:  # pointers, row strides and V: divisible by 16, as the JIT specializes
                # fresh tensors and a vocabulary like 32000 (vectorized row loads / stores)
                sig[arg] = "i64" if arg.startswith("stride_") else \
                    "i32" if arg == "V" else "*" + types.get(arg, a)
                attrs[(i,)] = [["tt.divisibility", 16]]
        for arch in (80, 90):
            k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=const, attrs=attrs),
                               target=GPUTarget("cuda", arch, 32),
                               options={"num_warps": J._warps(const["BLOCK"])})
            use = resource_usage(k.asm["cubin"])
            res.append(dict(kernel=name, dtype=dt, arch=arch, block=const["BLOCK"],
                            warps=J._warps(const["BLOCK"]), **use))
print("RESULT" + json.dumps(res))
"""


@pytest.mark.compile_check
def test_triton_janus_rows_aot_compiles_without_spills():
    run_aot_script(_AOT_SCRIPT, expected_rows=16)
