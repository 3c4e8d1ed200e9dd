"""janus_kernels.attention on CPU (backend "cpu", the compiled kernel; "reference" where
noted): numerics vs the dense eager reference for every case of the one attention table
(_attention_cases.py: every mask family, awkward shapes, GQA, dropout, (B, L, H, d) layouts;
the CPU takes the SMALL and MEDIUM cases), bf16/fp16, non-contiguous inputs, bad input,
opcheck, torch.compile."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

import janus_kernels as jk
from janus_kernels import _ext
from janus_kernels.dropout import dropout_keep_mask

from attention_utils import assert_close_to_reference, make_qkv
from _attention_cases import (CASES, CPU_SIZES, DROPOUT_SEED, MAX_SCORE_ENTRIES, AttnCase,
                              make_inputs, params, shaped)

# every test runs once per CPU ISA level this machine has (conftest.cpu_isa_level)
pytestmark = [pytest.mark.skipif(not _ext.available(), reason="compiled extension missing"),
              pytest.mark.usefixtures("cpu_isa_level")]


def run(q, k, v, do, desc, **kw):
    qr, kr, vr = (t.detach().clone().requires_grad_() for t in (q, k, v))
    o = jk.attention(qr, kr, vr, desc, **kw)
    grads = torch.autograd.grad(o, (qr, kr, vr), do)
    return [o.detach()] + list(grads)


def check_case(case: AttnCase, dtype: torch.dtype, grad_gain: float = 1.0) -> None:
    """One table case through jk.attention (autograd) at its shape, against the references."""
    desc = case.mask()
    q, k, v, do = make_inputs(case, desc, dtype)
    do = grad_gain * do
    kw, keep = {}, None
    if case.dropout:
        kw = dict(dropout_p=case.dropout, seed=DROPOUT_SEED)
        keep = dropout_keep_mask(DROPOUT_SEED, desc.batch_size, case.H, desc.q_len, desc.kv_len,
                                 case.dropout)
    assert_close_to_reference(run(q, k, v, do, desc, scale=case.scale, **kw), q, k, v, do,
                              desc.materialize(), scale=case.scale, keep=keep,
                              dropout_p=case.dropout)


@pytest.mark.parametrize("case", params("cpu", CPU_SIZES))
def test_fp32_matches_reference(case):
    check_case(case, case.dtype, grad_gain=2.0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", params("cpu", CPU_SIZES, half=True))
def test_low_precision(case, dtype):
    check_case(case, dtype)


def test_case_table_size_classes():
    """The size classes of the one case table hold what they promise: the SMALL cases, which
    the Triton interpreter and the CUDA emulation run, stay cheap; names are unique."""
    assert len(set(CASES)) == len(CASES)
    for case in CASES.values():
        if case.size in MAX_SCORE_ENTRIES:
            assert case.score_entries() <= MAX_SCORE_ENTRIES[case.size], case.name


def test_bf16_odd_head_dim_and_gqa():
    check_case(shaped("janus_nar", H=4, Hkv=2, d=33), torch.bfloat16)


@pytest.mark.parametrize("case,H,Hkv,d", [
    ("janus_nar_padded", 4, 2, 64),   # GQA, padding rows, odd row-block tails
    ("janus_nar_padded", 3, 1, 16),
    ("sliding_window", 2, 2, 2),      # tiny even head dim, odd key-chunk widths
    ("prefix_lm", 2, 1, 32),
    ("hf_chunked_attention", 4, 2, 64),   # documents: classes from corner documents
    ("documents_prefix", 2, 1, 32),       # per-element path (prefix above a document start)
    ("hf_decode", 2, 2, 16),              # one row at an offset, left padding
])
def test_bf16_native_backward_shapes(case, H, Hkv, d):
    """Even d in bf16 runs the native bf16 backward (VNNI brgemm); check GQA and odd tiles."""
    check_case(shaped(case, H=H, Hkv=Hkv, d=d), torch.bfloat16, grad_gain=3.0)


@pytest.mark.parametrize("case,Hkv", [("janus_nar", 1), ("permutation", 2)])
def test_bf16_dropout_matches_dense_keep_mask(case, Hkv):
    desc = CASES[case].mask()
    q, k, v, do = make_qkv(desc, H=2, Hkv=Hkv, d=64, dtype=torch.bfloat16)
    p, seed = 0.25, 99
    keep = dropout_keep_mask(seed, desc.batch_size, 2, desc.q_len, desc.kv_len, p)
    ours = run(q, k, v, do, desc, dropout_p=p, seed=seed)
    assert_close_to_reference(ours, q, k, v, do, desc.materialize(), keep=keep, dropout_p=p)


@pytest.mark.parametrize("H,Hkv", [(4, 1), (6, 2), (3, 3)])
def test_gqa(H, Hkv):
    desc = CASES["janus_nar_padded"].mask()
    q, k, v, do = make_qkv(desc, H=H, Hkv=Hkv, d=16)
    assert_close_to_reference(run(q, k, v, do, desc), q, k, v, do, desc.materialize())


@pytest.mark.parametrize("d", [1, 7, 64, 128, 256])
def test_head_dims(d):
    desc = jk.janus_nar_mask([9, 40], [5, 33])
    q, k, v, do = make_qkv(desc, H=1, d=d)
    assert_close_to_reference(run(q, k, v, do, desc), q, k, v, do, desc.materialize())


def test_non_contiguous_and_expanded_inputs():
    desc = jk.janus_nar_mask([9, 40], [5, 33])
    B, Lq, Lk = 2, desc.q_len, desc.kv_len
    g = torch.Generator().manual_seed(3)
    q = torch.randn(B, Lq, 4, 32, generator=g).transpose(1, 2)        # (B, H, L, d) strided
    k = torch.randn(B, Lk, 1, 32, generator=g).transpose(1, 2).expand(B, 4, Lk, 32)
    v = torch.randn(B, 4, 32, Lk, generator=g).transpose(2, 3)       # last dim not contiguous
    do = torch.randn(B, 4, Lq, 32, generator=g)
    assert not q.is_contiguous() and k.stride(1) == 0 and v.stride(-1) != 1
    ours = run(q, k, v, do, desc)
    assert_close_to_reference(ours, q.contiguous(), k.contiguous(), v.contiguous(), do,
                              desc.materialize())


def test_fully_masked_rows_give_zero_and_finite_grads():
    rank = torch.tensor([[2, 0, 1, 3]])
    desc = jk.permutation_mask(rank, [3])  # query of rank 0 sees nothing; row 3 is padding
    q, k, v, do = make_qkv(desc, H=2, d=8)
    out, lse = jk.attention(q, k, v, desc, return_lse=True)
    dead = ~desc.materialize().any(-1)                                  # (B, Lq)
    assert dead.sum() == 3  # padding content row 3, padding query row 7, query of rank 0
    assert (out[:, :, dead[0]] == 0).all()
    assert torch.isneginf(lse[:, :, dead[0]]).all()
    assert torch.isfinite(lse[:, :, ~dead[0]]).all()
    o, dq, dk, dv = run(q, k, v, do, desc)
    assert all(torch.isfinite(t).all() for t in (dq, dk, dv))
    assert (dq[:, :, dead[0]] == 0).all()


def test_inputs_not_modified():
    desc = CASES["janus_nar"].mask()
    q, k, v, do = make_qkv(desc)
    copies = [t.clone() for t in (q, k, v, do)]
    params = desc.params.clone()
    run(q, k, v, do, desc, dropout_p=0.2, seed=3)
    assert all(torch.equal(a, b) for a, b in zip((q, k, v, do), copies))
    assert torch.equal(params, desc.params)


def test_lse_matches_reference():
    desc = CASES["janus_nar_padded"].mask()
    q, k, v, _ = make_qkv(desc)
    _, lse = jk.attention(q, k, v, desc, return_lse=True)
    _, lse_ref = jk.attention(q.double(), k.double(), v.double(), desc, return_lse=True,
                              backend="reference")
    finite = torch.isfinite(lse_ref)
    assert torch.equal(finite, torch.isfinite(lse))
    assert (lse[finite].double() - lse_ref[finite]).abs().max() < 1e-5


@pytest.mark.parametrize("case", ["janus_nar", "causal", "permutation"])
def test_dropout_matches_dense_keep_mask(case):
    desc = CASES[case].mask()
    q, k, v, do = make_qkv(desc, H=2, d=16)
    p, seed = 0.3, 1234
    keep = dropout_keep_mask(seed, desc.batch_size, 2, desc.q_len, desc.kv_len, p)
    ours = run(q, k, v, do, desc, dropout_p=p, seed=seed)
    assert_close_to_reference(ours, q, k, v, do, desc.materialize(), keep=keep, dropout_p=p)
    # the same seed gives the same output; another seed a different one
    again = jk.attention(q, k, v, desc, dropout_p=p, seed=seed)
    other = jk.attention(q, k, v, desc, dropout_p=p, seed=seed + 1)
    assert torch.equal(again, ours[0]) and not torch.equal(other, ours[0])


def test_dropout_keep_rate():
    keep = dropout_keep_mask(7, 2, 3, 64, 64, 0.25)
    assert abs(keep.float().mean().item() - 0.75) < 0.01


def test_scale_argument():
    desc = CASES["causal"].mask()
    q, k, v, do = make_qkv(desc)
    assert_close_to_reference(run(q, k, v, do, desc, scale=0.3), q, k, v, do,
                              desc.materialize(), scale=0.3)


def test_reference_backend_agrees():
    desc = CASES["janus_nar"].mask()
    q, k, v, do = make_qkv(desc)
    a = run(q, k, v, do, desc, backend="cpu")
    b = run(q, k, v, do, desc, backend="reference")
    for x, y in zip(a, b):
        assert (x - y).abs().max() < 1e-4


def test_empty_shapes():
    desc = jk.janus_nar_mask(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), 4, 2)
    q = torch.randn(0, 2, 6, 8)
    k = torch.randn(0, 2, 4, 8)
    assert jk.attention(q, k, k, desc).shape == (0, 2, 6, 8)
    desc = jk.key_padding_mask([0, 0], q_len=3, kv_len=0)
    q, k = torch.randn(2, 1, 3, 8), torch.randn(2, 1, 0, 8)
    out = jk.attention(q, k, k, desc)
    assert out.shape == (2, 1, 3, 8) and (out == 0).all()


def test_gradcheck_fp64_reference_path():
    """fp64 inputs run the reference backend; gradcheck the op's autograd wiring."""
    desc = jk.janus_nar_mask([2, 3], [2, 1])
    q, k, v, _ = make_qkv(desc, H=1, d=4, dtype=torch.float64)
    qkv = [t.requires_grad_() for t in (q, k, v)]
    assert torch.autograd.gradcheck(lambda a, b, c: jk.attention(a, b, c, desc), qkv)


@settings(max_examples=25, deadline=None)
@given(U=st.lists(st.integers(0, 40), min_size=1, max_size=3), seed=st.integers(0, 10_000),
       Mfrac=st.floats(0, 1.5), d=st.sampled_from([8, 16, 24]), pad=st.integers(0, 9))
def test_fuzz_janus_nar(U, seed, Mfrac, d, pad):
    M = [int(u * Mfrac) for u in U]
    if max(u + 2 * m for u, m in zip(U, M)) == 0:
        return
    desc = jk.janus_nar_mask(U, M, max(u + 2 * m for u, m in zip(U, M)) + pad, max(M) + pad)
    q, k, v, do = make_qkv(desc, H=2, d=d, seed=seed)
    assert_close_to_reference(run(q, k, v, do, desc), q, k, v, do, desc.materialize())


# ------------------------------------------------------------------ errors and torch APIs
@pytest.mark.parametrize("mutate,match", [
    (lambda q, k, v: (q[0], k, v), r"q must be 4-D"),
    (lambda q, k, v: (q.int(), k, v), r"q must be float32"),
    (lambda q, k, v: (q, k.double(), v), r"share a dtype"),
    (lambda q, k, v: (q, k[:, :, :-1], v), r"same shape"),
    (lambda q, k, v: (q, k[:1], v[:1]), r"k must be \(B="),
    (lambda q, k, v: (q, k[:, :, :-1], v[:, :, :-1]), r"kv_len="),
    (lambda q, k, v: (q[:, :3], k[:, :2], v[:, :2]), r"multiple of the heads"),
    (lambda q, k, v: (q[:1], k[:1], v[:1]), r"batch size"),
])
def test_bad_input_errors(mutate, match):
    desc = jk.janus_nar_mask([3, 4], [2, 1])
    q, k, v, _ = make_qkv(desc, H=4, d=8)
    with pytest.raises((ValueError, TypeError), match=match):
        jk.attention(*mutate(q, k, v), desc)


def test_bad_arguments():
    desc = jk.janus_nar_mask([3, 4], [2, 1])
    q, k, v, _ = make_qkv(desc, H=2, d=8)
    with pytest.raises(TypeError, match="MaskDescriptor"):
        jk.attention(q, k, v, torch.ones(2, 9, 7, dtype=torch.bool))
    with pytest.raises(ValueError, match="dropout_p"):
        jk.attention(q, k, v, desc, dropout_p=1.0)
    with pytest.raises(ValueError, match="backend"):
        jk.attention(q, k, v, desc, backend="nope")
    with pytest.raises(ValueError, match="head_dim"):
        jk.attention(torch.randn(2, 2, 9, 300), torch.randn(2, 2, 7, 300),
                     torch.randn(2, 2, 7, 300), desc)


def test_opcheck():
    desc = jk.janus_nar_mask([3, 4], [2, 1])
    q, k, v, _ = make_qkv(desc, H=2, d=8)
    q.requires_grad_(), k.requires_grad_(), v.requires_grad_()
    args = (q, k, v, desc.params, None, desc.q_split, 0, 0.35, 0.0, None, "cpu")
    torch.library.opcheck(torch.ops.janus.attention_fwd.default, args)


def test_torch_compile_fullgraph():
    desc = jk.janus_nar_mask([3, 4], [2, 1])
    q, k, v, do = make_qkv(desc, H=2, d=8)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(q, k, v):
        return jk.attention(q, k, v, desc) * 2

    qr, kr, vr = (t.clone().requires_grad_() for t in (q, k, v))
    out = f(qr, kr, vr)
    out.backward(do)
    ref = run(q, k, v, 2 * do, desc)
    assert (out.detach() - 2 * ref[0]).abs().max() < 1e-5
    assert (qr.grad - ref[1]).abs().max() < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pooled_output_blocks_are_fully_rewritten(dtype):
    """Outputs and gradients of >= 2 MiB come from the output pool, whose reused blocks hold
    whatever the previous owner left: poison them with NaN and check that every element,
    padding rows and keys past a sample's length included, is written again."""
    desc = jk.janus_nar_mask([20, 3, 60], [15, 1, 50], 180, 60)   # padded rows and keys
    q, k, v, do = make_qkv(desc, H=32, d=64, dtype=dtype)   # bf16: o, dq 2.9 MB, dk, dv 2.2 MB
    expect = None
    for _ in range(3):
        got = run(q, k, v, do, desc)
        if expect is None:
            expect = [t.clone() for t in got]
        else:
            for a, b in zip(got, expect):
                assert torch.equal(a, b)
        for t in got:                      # back to the pool holding NaN
            t.fill_(float("nan"))
        del got
    assert_close_to_reference(expect, q, k, v, do, desc.materialize())
    assert jk.empty_cache() > 0


@pytest.mark.parametrize("chunk", [None, 3])
def test_torch_compile_fullgraph_hf_mask(chunk):
    """The HF path as the integration runs it: the descriptor built from the 2-D padding mask
    inside the compiled graph (no data-dependent branch), then attention with its backward;
    also opcheck of the op with a documents side table."""
    am = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]])
    desc = jk.hf_mask(am, 7, 7, chunk_size=chunk)
    q, k, v, do = make_qkv(desc, H=2, d=8)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(q, k, v, am):
        return jk.attention(q, k, v, jk.hf_mask(am, 7, 7, chunk_size=chunk))

    qr, kr, vr = (t.clone().requires_grad_() for t in (q, k, v))
    out = f(qr, kr, vr, am)
    out.backward(do)
    ref = run(q, k, v, do, desc)
    assert (out.detach() - ref[0]).abs().max() < 1e-5
    assert (kr.grad - ref[2]).abs().max() < 1e-5
    args = (q, k, v, desc.params, desc.rank, desc.q_split, int(desc.kind), 0.35, 0.0, None,
            "cpu")
    torch.library.opcheck(torch.ops.janus.attention_fwd.default, args)
