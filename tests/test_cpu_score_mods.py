"""Score modifiers (softcap, rel_bias) in the compiled CPU kernels, at every ISA level
(conftest.cpu_isa_level): bf16 / fp16 (the native-bf16 AMX path with an even head dim, the
widening path with an odd one), GQA, awkward sizes, rows that see no key, dropout, the lse and
its gradient, random shapes, a d_rel_bias that does not depend on the thread count, and bad
modifier arguments to the raw op. Everything against the dense autograd reference with the
project's tolerance rule (attention_utils)."""
from typing import Optional

import pytest
import torch
from hypothesis import given, settings, strategies as st

import janus_kernels as jk
from janus_kernels import _ext, masks
from janus_kernels.dropout import dropout_keep_mask

from attention_utils import assert_close_to_reference, make_qkv, ref_outputs

pytestmark = [pytest.mark.skipif(not _ext.available(), reason="compiled extension missing"),
              pytest.mark.usefixtures("cpu_isa_level")]

MODS = {"softcap": (2.5, False), "rel_bias": (None, True), "both": (4.0, True)}
#: fp32 floor where rows may see a single key (Lk = 1): there the exact dS is 0 and the
#: reference's autograd gets exactly 0, while the kernel's dP - delta (two dot products summed
#: in different orders) cancels to rounding noise, ~eps |dO| |V| sqrt(d), times scale |K|
SINGLE_KEY_FLOOR = 2e-5


def run_cpu(q, k, v, do, mask, softcap: Optional[float], rel: Optional[torch.Tensor], **kw):
    """[out, dq, dk, dv] (+ d_rel_bias) of the cpu backend, through autograd."""
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    if rel is not None:
        leaves.append(rel.detach().clone().requires_grad_())
    out = jk.attention(*leaves[:3], mask, softcap=softcap,
                       rel_bias=leaves[3] if rel is not None else None, backend="cpu", **kw)
    return [out.detach()] + list(torch.autograd.grad(out, leaves, do))


def _inputs(mask, *, H=4, Hkv=2, d=16, dtype=torch.float32, seed=0, rel=True):
    q, k, v, do = make_qkv(mask, H=H, Hkv=Hkv, d=d, dtype=dtype, seed=seed)
    q, k = q * 2, k * 2   # scores of a few units: the softcap bends them
    g = torch.Generator().manual_seed(seed + 100)
    bias = torch.randn(H, mask.q_len + mask.kv_len - 1, generator=g) if rel else None
    return q, k, v, do, bias


@pytest.mark.parametrize("mods", list(MODS))
@pytest.mark.parametrize("d", [64, 7])          # even: native bf16 on AMX; odd: widened tiles
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_gqa(dtype, d, mods):
    mask = masks.causal_mask([113, 40, 1], 113)
    softcap, with_rel = MODS[mods]
    q, k, v, do, rel = _inputs(mask, d=d, dtype=dtype, rel=with_rel)
    got = run_cpu(q, k, v, do, mask, softcap, rel)
    assert_close_to_reference(got, q, k, v, do, mask.materialize(), softcap=softcap, rel_bias=rel)


@pytest.mark.parametrize("lq,lk", [(1, 1), (1, 113), (113, 1), (7, 113), (113, 7), (113, 113)])
@pytest.mark.parametrize("kind", ["full", "causal"])
def test_awkward_sizes(kind, lq, lk):
    mask = masks.full_mask(2, lq, lk) if kind == "full" else \
        masks.causal_mask([lq, max(lq // 2, 1)], lq, kv_lengths=[lk, max(lk // 3, 1)], kv_len=lk)
    q, k, v, do, rel = _inputs(mask, H=2, Hkv=1, d=24, seed=lq + lk)
    got = run_cpu(q, k, v, do, mask, 3.0, rel)
    assert_close_to_reference(got, q, k, v, do, mask.materialize(), softcap=3.0, rel_bias=rel,
                              floor=SINGLE_KEY_FLOOR)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rows_without_keys(dtype):
    """Valid rows that see no key: out 0, lse -inf, no gradient, and no NaN from the bias."""
    mask = masks.key_padding_mask([0, 9], q_len=6, kv_len=9)
    q, k, v, do, rel = _inputs(mask, d=16, dtype=dtype)
    got = run_cpu(q, k, v, do, mask, 2.0, rel)
    assert_close_to_reference(got, q, k, v, do, mask.materialize(), softcap=2.0, rel_bias=rel)
    assert torch.all(got[0][0] == 0) and torch.all(got[1][0] == 0)
    _, lse = jk.attention(q, k, v, mask, softcap=2.0, rel_bias=rel, backend="cpu",
                          return_lse=True)
    assert torch.all(lse[0] == float("-inf")) and torch.isfinite(lse[1]).all()


@pytest.mark.parametrize("softcap,gain", [(0.5, 30.0), (50.0, 0.05)])
def test_softcap_extremes(softcap, gain):
    """Both branches of the kernels' tanh at their ends: scores hundreds of softcaps away
    (exp(2|x|) overflows: tanh = +-1 exactly, zero gradient) and tiny ones (the series)."""
    mask = masks.causal_mask([40, 17])
    q, k, v, do, rel = _inputs(mask, d=16)
    q = q * gain
    got = run_cpu(q, k, v, do, mask, softcap, rel)
    assert_close_to_reference(got, q, k, v, do, mask.materialize(), softcap=softcap,
                              rel_bias=rel)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_with_mods(dtype):
    mask = masks.janus_nar_mask([5, 30], [3, 20])
    q, k, v, do, rel = _inputs(mask, d=32, dtype=dtype)
    p, seed = 0.3, 11
    keep = dropout_keep_mask(seed, mask.batch_size, 4, mask.q_len, mask.kv_len, p)
    got = run_cpu(q, k, v, do, mask, 3.0, rel, dropout_p=p, seed=seed)
    assert_close_to_reference(got, q, k, v, do, mask.materialize(), keep=keep, dropout_p=p,
                              softcap=3.0, rel_bias=rel)


def test_lse_and_its_gradient():
    """lse is the log-sum-exp of the modified scores, and its gradient (the backward's second
    call with V' = [1, 0, ...]) reaches q, k and the table."""
    mask = masks.causal_mask([9, 4], kv_lengths=[11, 6], kv_len=11)
    q, k, v, do, rel = _inputs(mask, d=16)
    w = torch.randn(mask.batch_size, 4, mask.q_len)

    def loss(backend, dtype):
        leaves = [t.detach().to(dtype).clone().requires_grad_() for t in (q, k, v, rel)]
        out, lse = jk.attention(*leaves[:3], mask, softcap=2.0, rel_bias=leaves[3],
                                return_lse=True, backend=backend)
        fin = torch.isfinite(lse)
        total = (out * do.to(dtype)).sum() + (lse[fin] * w.to(dtype)[fin]).sum()
        return [lse.detach()] + list(torch.autograd.grad(total, leaves))

    got = loss("cpu", torch.float32)
    want = loss("reference", torch.float64)
    for name, a, b in zip(["lse", "dq", "dk", "dv", "d_rel_bias"], got, want):
        fin = torch.isfinite(b)
        assert torch.equal(torch.isfinite(a), fin), name
        assert torch.allclose(a[fin].double(), b[fin].double(), atol=2e-5, rtol=1e-4), name


@settings(max_examples=15, deadline=None)
@given(B=st.integers(1, 3), hkv=st.integers(1, 2), group=st.integers(1, 3),
       lq=st.integers(1, 70), lk=st.integers(1, 150), d=st.sampled_from([1, 5, 16, 40]),
       softcap=st.one_of(st.none(), st.floats(0.5, 20.0)), with_rel=st.booleans(),
       causal=st.booleans(), seed=st.integers(0, 1000))
def test_random_shapes(B, hkv, group, lq, lk, d, softcap, with_rel, causal, seed):
    if softcap is None and not with_rel:
        with_rel = True
    g = torch.Generator().manual_seed(seed)
    if causal:
        lens = torch.randint(1, lq + 1, (B,), generator=g).tolist()
        kvl = torch.randint(0, lk + 1, (B,), generator=g).tolist()
        mask = masks.causal_mask(lens, lq, kv_lengths=kvl, kv_len=lk)
    else:
        mask = masks.full_mask(B, lq, lk)
    q, k, v, do, rel = _inputs(mask, H=hkv * group, Hkv=hkv, d=d, seed=seed, rel=with_rel)
    got = run_cpu(q, k, v, do, mask, softcap, rel)
    assert_close_to_reference(got, q, k, v, do, mask.materialize(), softcap=softcap, rel_bias=rel,
                              floor=SINGLE_KEY_FLOOR)


def test_d_rel_bias_does_not_depend_on_threads():
    """Each (b, h) accumulates into its own slab row, summed over b in a fixed order: the table's
    gradient is bitwise the same whatever the thread count and schedule."""
    mask = masks.causal_mask([70, 33, 50, 9], 70)
    q, k, v, do, rel = _inputs(mask, H=4, Hkv=2, d=16)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(run_cpu(q, k, v, do, mask, 2.0, rel)[4])
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(results[0], r) for r in results[1:])


def test_mods_change_the_cpu_output():
    """softcap and rel_bias are honoured, not dropped (the plain kernel would pass a loose
    comparison on scores this small)."""
    mask = masks.causal_mask([12])
    q, k, v, do, rel = _inputs(mask, H=2, Hkv=2, d=8)
    plain = jk.attention(q, k, v, mask, backend="cpu")
    for kw in (dict(softcap=1.0), dict(rel_bias=rel)):
        got = jk.attention(q, k, v, mask, backend="cpu", **kw)
        want = ref_outputs(q, k, v, do, mask.materialize(), upcast=True,
                           softcap=kw.get("softcap"), rel_bias=kw.get("rel_bias"))[0]
        assert (got - plain).abs().max() > 1e-2
        assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("rel_shape,softcap,match", [
    ((2, 10), 0.0, r"rel_bias: expected a float32 CPU tensor \(H=2, Lq \+ Lk - 1=11\)"),
    ((3, 11), 0.0, r"rel_bias: expected a float32 CPU tensor \(H=2"),
    (None, -1.0, "softcap: must be finite and >= 0"),
    (None, float("nan"), "softcap: must be finite and >= 0"),
])
def test_raw_op_names_bad_mods(rel_shape, softcap, match):
    mask = masks.causal_mask([6])
    q, k, v, do = make_qkv(mask, H=2, d=8)
    rel = None if rel_shape is None else torch.zeros(rel_shape)
    args = (mask.params, mask.rank, mask.q_split, int(mask.kind), 0.35, 0.0, None, rel, softcap)
    with pytest.raises(RuntimeError, match=match):
        torch.ops.janus.flash_attention_fwd(q, k, v, *args)
    with pytest.raises(RuntimeError, match=match):
        torch.ops.janus.flash_attention_bwd(do, q, k, v, q, torch.zeros(1, 2, 6), *args)
