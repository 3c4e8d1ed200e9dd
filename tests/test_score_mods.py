"""Score modifiers (softcap, relative bias): the table builders of janus_kernels.score_mods,
and attention with them on every backend -- derived from the backend contract: a backend that
declares a modifier is checked against the dense autograd reference with the tolerance rule
(forward, dq/dk/dv and the table's gradient); one that does not must refuse it by name."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

import janus_kernels as jk
from janus_kernels import backends, masks, score_mods

from attention_utils import assert_within_rule, make_qkv, ref_outputs
from _device_sizes import INTERPRET

BACKENDS = ["cpu", "reference"] + (["triton"] if INTERPRET else [])
MODS = {"softcap": dict(softcap=2.5), "rel_bias": dict(rel=True),
        "both": dict(softcap=4.0, rel=True)}


# ================================================================== table builders
def _t5_bucket_scalar(rel: int, bidirectional: bool, num_buckets: int, max_distance: int) -> int:
    """T5's bucket of one signed distance, with Python math (independent of the torch code)."""
    n, b = num_buckets, 0
    if bidirectional:
        n //= 2
        b = n if rel > 0 else 0
        rel = abs(rel)
    else:
        rel = max(-rel, 0)
    exact = n // 2
    if rel < exact:
        return b + rel
    far = exact + int(math.log(rel / exact) / math.log(max_distance / exact) * (n - exact))
    return b + min(far, n - 1)


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (8, 20), (6, 7)])
def test_t5_buckets_match_scalar_formula(bidirectional, num_buckets, max_distance):
    dist = torch.arange(-300, 301)
    got = score_mods.t5_buckets(dist, bidirectional=bidirectional, num_buckets=num_buckets,
                                max_distance=max_distance)
    want = [_t5_bucket_scalar(int(r), bidirectional, num_buckets, max_distance) for r in dist]
    assert got.tolist() == want


def test_t5_buckets_match_transformers():
    t5 = pytest.importorskip("transformers.models.t5.modeling_t5")
    dist = torch.arange(-200, 201)
    for bidi in (True, False):
        want = t5.T5Attention._relative_position_bucket(dist, bidirectional=bidi,
                                                        num_buckets=32, max_distance=128)
        got = score_mods.t5_buckets(dist, bidirectional=bidi, num_buckets=32, max_distance=128)
        assert torch.equal(got, want)


def test_t5_buckets_reject_degenerate_config():
    with pytest.raises(ValueError, match="num_buckets"):
        score_mods.t5_buckets(torch.arange(3), bidirectional=True, num_buckets=2, max_distance=8)


@pytest.mark.parametrize("n", [1, 2, 6, 8, 12])
def test_alibi_slopes(n):
    got = score_mods.alibi_slopes(n)
    p = 2 ** int(math.floor(math.log2(n)))
    base = [2 ** (-8 * (i + 1) / p) for i in range(p)]
    extra = [2 ** (-8 * (i + 1) / (2 * p)) for i in range(2 * p)][0::2][: n - p]
    assert torch.allclose(got.double(), torch.tensor(base + extra, dtype=torch.float64))


@settings(max_examples=30, deadline=None)
@given(lq=st.integers(1, 9), lk=st.integers(1, 9), off=st.one_of(st.none(), st.integers(-3, 12)))
def test_tables_index_the_distance(lq, lk, off):
    """Column j - i + Lq - 1 of every table holds the model's value at distance
    j - pos(i), pos(i) = q_offset + i (default Lk - Lq)."""
    slopes = torch.tensor([0.5, 0.25])
    alibi = score_mods.dense_rel_bias(score_mods.alibi_bias(slopes, lq, lk, off), lq, lk)
    emb = torch.randn(2, 8)
    t5 = score_mods.dense_rel_bias(score_mods.t5_bias(emb, lq, lk, bidirectional=True,
                                                      num_buckets=8, max_distance=20,
                                                      q_offset=off or 0), lq, lk)
    pos0 = (lk - lq) if off is None else off
    for i in range(lq):
        for j in range(lk):
            assert alibi[1, i, j].item() == 0.25 * (j - (pos0 + i))
            b = _t5_bucket_scalar(j - (i + (off or 0)), True, 8, 20)
            assert t5[0, i, j].item() == emb[0, b].item()


def test_rel_bias_grad_sums_diagonals():
    ds = torch.randn(3, 2, 4, 6, dtype=torch.float64)
    got = score_mods.rel_bias_grad(ds)
    want = torch.zeros(2, 9, dtype=torch.float64)
    for i in range(4):
        for j in range(6):
            want[:, j - i + 3] += ds[:, :, i, j].sum(0)
    assert torch.allclose(got.double(), want, atol=1e-5)


# ================================================================== attention
def _declares(backend: str, feature: str) -> bool:
    return any(feature in s.features for s in backends.get(backend).serves
               if "attention" in s.ops)


def _masks():
    return {
        "causal_pad": masks.causal_mask([7, 4, 1]),
        "janus_nar": masks.janus_nar_mask([3, 5], [2, 4], 14, 5),
        "full_7x113": masks.full_mask(2, 7, 113),
        "sliding": masks.sliding_window_mask([9, 6], 3),
    }


@pytest.mark.parametrize("mods", list(MODS))
@pytest.mark.parametrize("mask_name", list(_masks()))
@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_with_score_mods(backend, mask_name, mods):
    mask = _masks()[mask_name]
    spec = MODS[mods]
    needed = [f for f in ("softcap", "rel_bias") if f in spec or (f == "rel_bias" and "rel" in spec)]
    H, d = 4, 16
    q, k, v, do = make_qkv(mask, H=H, Hkv=2, d=d, seed=3)
    q, k = q * 2, k * 2   # scores of a few units: the softcap bends them
    Lq, Lk = mask.q_len, mask.kv_len
    rel = torch.randn(H, Lq + Lk - 1) if spec.get("rel") else None
    softcap = spec.get("softcap")
    if not all(_declares(backend, f) for f in needed):
        with pytest.raises(backends.BackendError, match="does not implement"):
            jk.attention(q, k, v, mask, softcap=softcap, rel_bias=rel, backend=backend)
        return
    leaves = [t.clone().requires_grad_() for t in (q, k, v)] + \
        ([rel.clone().requires_grad_()] if rel is not None else [])
    out = jk.attention(*leaves[:3], mask, softcap=softcap,
                       rel_bias=leaves[3] if rel is not None else None, backend=backend)
    got = [out.detach()] + list(torch.autograd.grad(out, leaves, do))
    allowed = mask.materialize()
    exact = ref_outputs(q.double(), k.double(), v.double(), do.double(), allowed, upcast=True,
                        softcap=softcap, rel_bias=None if rel is None else rel.double())
    same = ref_outputs(q, k, v, do, allowed, upcast=False, softcap=softcap, rel_bias=rel)
    names = ["out", "dq", "dk", "dv", "d_rel_bias"]
    for idx, (g, e, s) in enumerate(zip(got, exact, same)):
        fl = 8 * torch.finfo(torch.float32).eps * max(e.abs().max().item(), 1.0)
        assert_within_rule(f"{backend}/{names[idx]}", g, e, s, grad=idx > 0, floor=fl)


def test_softcap_changes_the_output():
    """The modifiers are not silently dropped (a test that could not fail otherwise)."""
    mask = masks.causal_mask([6])
    q, k, v, _ = make_qkv(mask, H=2, d=8, seed=1)
    plain = jk.attention(q * 3, k * 3, v, mask, backend="reference")
    capped = jk.attention(q * 3, k * 3, v, mask, softcap=1.0, backend="reference")
    biased = jk.attention(q * 3, k * 3, v, mask, backend="reference",
                          rel_bias=torch.randn(2, 11))
    assert (plain - capped).abs().max() > 1e-3 and (plain - biased).abs().max() > 1e-3


def test_lse_gradient_includes_the_bias():
    mask = masks.causal_mask([5, 3])
    q, k, v, _ = make_qkv(mask, H=2, d=8, seed=2)
    rel = torch.randn(2, 9, dtype=torch.float64, requires_grad=True)
    _, lse = jk.attention(q.double(), k.double(), v.double(), mask, rel_bias=rel,
                          return_lse=True, backend="reference", softcap=3.0)
    (g,) = torch.autograd.grad(lse[torch.isfinite(lse)].sum(), rel)
    # d(sum_i lse_i) / d bias = sum over the rows' softmax weights per diagonal: rows that see
    # a key contribute 1 each in total
    seen = torch.isfinite(lse).sum().item() / 2   # per head
    assert torch.allclose(g.sum(1), torch.full((2,), seen, dtype=torch.float64))


def test_default_backend_honours_features():
    for feature in ("softcap", "rel_bias"):
        name = jk.default_backend("attention", "cpu", torch.float32, 16, features=(feature,))
        assert _declares(name, feature)
    avail = jk.available_backends("cpu", "attention", torch.float32, 16, features=("rel_bias",))
    assert avail["reference"] == "yes"


@pytest.mark.parametrize("kwargs,match", [
    (dict(softcap=0.0), "softcap must be finite and > 0"),
    (dict(softcap=float("inf")), "softcap must be finite"),
    (dict(softcap="1"), "softcap must be a float"),
    (dict(rel_bias=torch.zeros(2, 10)), r"rel_bias must be a float tensor of shape \(H, Lq \+ Lk - 1\) = \(2, 11\)"),
    (dict(rel_bias=torch.zeros(2, 11, dtype=torch.int32)), "rel_bias must be a float tensor"),
    (dict(rel_bias=[0.0]), "rel_bias must be a torch.Tensor"),
])
def test_bad_score_mods_are_named(kwargs, match):
    mask = masks.causal_mask([6])
    q, k, v, _ = make_qkv(mask, H=2, d=8)
    with pytest.raises((ValueError, TypeError), match=match):
        jk.attention(q, k, v, mask, backend="reference", **kwargs)


def test_inputs_are_not_modified():
    mask = masks.causal_mask([6])
    q, k, v, do = make_qkv(mask, H=2, d=8)
    rel = torch.randn(2, 11)
    before = [t.clone() for t in (q, k, v, rel)]
    out = jk.attention(q.requires_grad_(), k, v, mask, rel_bias=rel, softcap=2.0,
                       backend="reference")
    out.backward(do)
    for a, b in zip((q, k, v, rel), before):
        assert torch.equal(a.detach(), b)


def _serving(feature_set) -> list:
    return [b for b in BACKENDS if all(_declares(b, f) for f in feature_set)]


@pytest.mark.parametrize("backend", _serving(("softcap", "rel_bias")))
def test_opcheck_with_score_mods(backend):
    mask = masks.causal_mask([5, 3])
    q, k, v, do = make_qkv(mask, H=2, d=8)
    rel = torch.randn(2, 9)
    common = (mask.params, mask.rank, mask.q_split, int(mask.kind), 0.35, 0.0, None, backend)
    torch.library.opcheck(torch.ops.janus.attention_fwd.default,
                          (q.requires_grad_(), k, v) + common + (False, rel.requires_grad_(), 2.0))
    out, lse = torch.ops.janus.attention_fwd(q.detach(), k, v, *common, False, rel.detach(), 2.0)
    torch.library.opcheck(torch.ops.janus.attention_bwd.default,
                          (do, q.detach(), k, v, out, lse) + common + (rel.detach(), 2.0))


@pytest.mark.parametrize("backend", _serving(("softcap", "rel_bias")))
def test_compiled_fullgraph_with_score_mods(backend):
    mask = masks.causal_mask([6, 4])
    q, k, v, do = make_qkv(mask, H=2, d=8, seed=5)
    slopes = score_mods.alibi_slopes(2).requires_grad_()

    def f(q, k, v, slopes):
        rel = score_mods.alibi_bias(slopes, 6, 6)
        return jk.attention(q, k, v, mask, rel_bias=rel, softcap=5.0, backend=backend)

    leaves = [t.clone().requires_grad_() for t in (q, k, v)] + [slopes]
    eager = f(*leaves)
    ge = torch.autograd.grad(eager, leaves, do)
    leaves2 = [t.detach().clone().requires_grad_() for t in leaves]
    comp = torch.compile(f, fullgraph=True, backend="aot_eager")(*leaves2)
    gc = torch.autograd.grad(comp, leaves2, do)
    assert torch.allclose(eager, comp, atol=1e-6)
    for a, b in zip(ge, gc):
        assert torch.allclose(a, b, atol=1e-5)
