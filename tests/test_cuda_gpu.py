"""The CUDA attention kernels on a real GPU (marker cuda; skipped without one, or when the
extension was built without CUDA): every case of the one attention table (_attention_cases.py,
real sizes included) with the runner of the emulated tests (_cuda_attention_cases.py) through torch.ops.janus.flash_attention_fwd / _bwd, the dropout
keep-mask, the autograd path of janus_kernels.attention, layouts the kernels must copy, and
the glue's errors."""
from __future__ import annotations

import pytest
import torch

import janus_kernels as jk
from _attention_cases import GPU_SIZES, params
from _cuda_attention_cases import MOD_CASES, keep_mask_case, run_case, run_mods_case
from janus_kernels import _ext

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(not _ext.has_cuda_kernels(),
                       reason="janus_kernels._C was built without the CUDA kernels"),
]

DEV = "cuda"


def _seed_t(seed: int, p: float):
    if p <= 0:
        return None
    return torch.tensor([seed - (1 << 64) if seed >= 1 << 63 else seed], dtype=torch.int64)


def _fwd(q, k, v, mask, scale, p, seed):
    m = mask.to(DEV)
    out, lse = torch.ops.janus.flash_attention_fwd(
        q.to(DEV), k.to(DEV), v.to(DEV), m.params, m.rank, m.q_split, int(m.kind), scale, p,
        _seed_t(seed, p))
    return out.cpu(), lse.cpu()


def _bwd(dout, q, k, v, out, lse, mask, scale, p, seed):
    m = mask.to(DEV)
    grads = torch.ops.janus.flash_attention_bwd(
        dout.to(DEV), q.to(DEV), k.to(DEV), v.to(DEV), out.to(DEV), lse.to(DEV), m.params,
        m.rank, m.q_split, int(m.kind), scale, p, _seed_t(seed, p))
    return tuple(g.cpu() for g in grads[:3])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("case", params("cuda", GPU_SIZES))
def test_attention_matches_reference(case, dtype):
    run_case(_fwd, _bwd, case, dtype)


def _fwd_mods(q, k, v, mask, scale, p, seed, rel, cap):
    m = mask.to(DEV)
    out, lse = torch.ops.janus.flash_attention_fwd(
        q.to(DEV), k.to(DEV), v.to(DEV), m.params, m.rank, m.q_split, int(m.kind), scale, p,
        _seed_t(seed, p), None if rel is None else rel.to(DEV), cap)
    return out.cpu(), lse.cpu()


def _bwd_mods(dout, q, k, v, out, lse, mask, scale, p, seed, rel, cap):
    m = mask.to(DEV)
    grads = torch.ops.janus.flash_attention_bwd(
        dout.to(DEV), q.to(DEV), k.to(DEV), v.to(DEV), out.to(DEV), lse.to(DEV), m.params,
        m.rank, m.q_split, int(m.kind), scale, p, _seed_t(seed, p),
        None if rel is None else rel.to(DEV), cap)
    return tuple(g.cpu() for g in grads)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("case", MOD_CASES, ids=[c.name for c in MOD_CASES])
def test_score_mods_match_reference(case, dtype):
    """softcap / rel_bias (the WithMods kernels) through the ops, as in the emulated suite."""
    run_mods_case(_fwd_mods, _bwd_mods, case, dtype)


def test_dropout_keep_mask_is_identical():
    mask, p, seed, q, k, v, expected = keep_mask_case()
    out, _ = _fwd(q, k, v, mask, q.shape[-1] ** -0.5, p, seed)
    assert torch.equal(out[..., :k.shape[2]] != 0, expected)


def test_public_attention_autograd_on_gpu():
    mask = jk.janus_nar_mask([6, 3], [4, 2], 16, 4, device=DEV)
    q = torch.randn(2, 4, 20, 64, device=DEV, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(2, 2, 16, 64, device=DEV, dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(2, 2, 16, 64, device=DEV, dtype=torch.bfloat16, requires_grad=True)
    assert jk.default_backend("attention", q.device, q.dtype, 64) == "cuda"
    out = jk.attention(q, k, v, mask, backend="cuda")
    ref = jk.attention(q.float(), k.float(), v.float(), mask, backend="reference")
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=3e-2)
    g = torch.randn_like(out)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), g)
    rq, rk, rv = torch.autograd.grad(ref, (q, k, v), g.float())
    for a, b in ((dq, rq), (dk, rk), (dv, rv)):
        torch.testing.assert_close(a.float(), b.float(), atol=5e-2, rtol=5e-2)


def test_layouts_the_kernel_cannot_read_are_copied():
    """A last-dim offset of one element breaks the 16-byte alignment and a (B, L, H, d) view
    has a head stride of d: the glue copies the first, reads the second in place."""
    mask = jk.causal_mask([24], 24, device=DEV)
    args = (mask.params, None, mask.q_split, 0, 0.125, 0.0, None)
    base = torch.randn(1, 2, 24, 72, device=DEV, dtype=torch.float16)
    q = base[..., 1:65]                                   # misaligned, strided
    kv = torch.randn(1, 24, 2, 64, device=DEV, dtype=torch.float16).transpose(1, 2)
    out, lse = torch.ops.janus.flash_attention_fwd(q, kv, kv, *args)
    ref, ref_lse = torch.ops.janus.flash_attention_fwd(q.contiguous(), kv.contiguous(),
                                                       kv.contiguous(), *args)
    assert torch.equal(out, ref) and torch.equal(lse, ref_lse)
    assert torch.equal(base[..., 1:65], q)                # inputs untouched


def test_glue_errors_name_the_argument():
    mask = jk.causal_mask([8], 8, device=DEV)
    q = torch.randn(1, 2, 8, 64, device=DEV, dtype=torch.float16)
    args = (mask.params, None, mask.q_split, 0, 0.125, 0.0, None)
    with pytest.raises(RuntimeError, match="float16 and bfloat16"):
        torch.ops.janus.flash_attention_fwd(q.float(), q.float(), q.float(), *args)
    q12 = q[..., :12].contiguous()
    with pytest.raises(RuntimeError, match="head_dim"):
        torch.ops.janus.flash_attention_fwd(q12, q12, q12, *args)
    with pytest.raises(RuntimeError, match="mask_params"):
        torch.ops.janus.flash_attention_fwd(q, q, q, mask.params.cpu(), *args[1:])
    with pytest.raises(RuntimeError, match="rng_seed"):
        torch.ops.janus.flash_attention_fwd(q, q, q, mask.params, None, 8, 0, 0.125, 0.1, None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("dup", [False, True])
def test_janus_rows_cuda_matches_cpu(dtype, dup):
    """The CUDA fused JANUS criterion rows op (csrc/cuda/janus_loss.cu + glue) against the
    CPU op, forward and backward, with ignored rows and (optionally) repeated AR rows."""
    g = torch.Generator().manual_seed(5)
    N, M, V = 37, 15, 2051
    ar, nar, aux = (torch.randn(n, V, generator=g).mul(3).to(dtype) for n in (N, M, M))
    ar_t, m_t = torch.randint(0, V, (N,), generator=g), torch.randint(0, V, (M,), generator=g)
    ar_t[3], m_t[2] = -100, -100
    idx = torch.randperm(N, generator=g)[:M]
    if dup:
        idx[4] = idx[0]
    args = (ar_t, m_t, idx, 0.1, -100)
    cpu = torch.ops.janus.janus_rows_fwd(ar, nar, aux, *args)
    gpu = torch.ops.janus.janus_rows_fwd(ar.to(DEV), nar.to(DEV), aux.to(DEV),
                                         *(a.to(DEV) for a in args[:3]), 0.1, -100)
    for c, d in zip(cpu[:2], gpu[:2]):
        torch.testing.assert_close(d.cpu(), c, rtol=1e-5, atol=1e-5)
    g_ar, g_m = torch.rand(N, generator=g), torch.rand(M, 5, generator=g)
    dc = torch.ops.janus.janus_rows_bwd(g_ar, g_m, ar, nar, aux, *args[:3], cpu[2], cpu[3],
                                        0.1, -100)
    dg = torch.ops.janus.janus_rows_bwd(g_ar.to(DEV), g_m.to(DEV), ar.to(DEV), nar.to(DEV),
                                        aux.to(DEV), *(a.to(DEV) for a in args[:3]),
                                        gpu[2], gpu[3], 0.1, -100)
    tol = dict(rtol=1e-4, atol=1e-6) if dtype == torch.float32 else dict(rtol=2e-2, atol=1e-3)
    for c, d in zip(dc, dg):
        torch.testing.assert_close(d.cpu(), c, **tol)
    # and the public loss takes the fused CUDA path with backend="cuda"
    total, _ = jk.janus_loss(ar.to(DEV), nar.to(DEV), aux.to(DEV), ar_t.to(DEV), m_t.to(DEV),
                             idx.to(DEV), backend="cuda")
    ref, _ = jk.janus_loss(ar, nar, aux, ar_t, m_t, idx, backend="cuda")
    torch.testing.assert_close(total.cpu(), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mask_fn", [lambda: jk.causal_mask([1024, 900], 1024),
                                     lambda: jk.janus_nar_mask([200, 90], [150, 60])],
                         ids=["causal_1024", "janus_nar"])
def test_backward_is_bitwise_deterministic_on_gpu(mask_fn):
    """No atomics in the backward: two runs give the same bits (the dQ pass owns its rows)."""
    m = mask_fn().to(DEV)
    g = torch.Generator(device=DEV).manual_seed(3)
    q = torch.randn(2, 8, m.q_len, 64, device=DEV, dtype=torch.bfloat16, generator=g)
    k = torch.randn(2, 4, m.kv_len, 64, device=DEV, dtype=torch.bfloat16, generator=g)
    v = torch.randn_like(k)
    do = torch.randn_like(q)
    args = (m.params, m.rank, m.q_split, int(m.kind), 0.125, 0.1,
            torch.tensor([1234], dtype=torch.int64))
    out, lse = torch.ops.janus.flash_attention_fwd(q, k, v, *args)
    first = torch.ops.janus.flash_attention_bwd(do, q, k, v, out, lse, *args)
    for _ in range(3):
        again = torch.ops.janus.flash_attention_bwd(do, q, k, v, out, lse, *args)
        assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_batch_times_heads_above_65535_on_gpu():
    """One-dimensional grids: B * H past grid.y's 65535 launches and is right."""
    B, H, L = 4100, 16, 16
    m = jk.causal_mask([L] * B, L).to(DEV)
    q = torch.randn(B, H, L, 64, device=DEV, dtype=torch.bfloat16, requires_grad=True)
    k, v = torch.randn_like(q), torch.randn_like(q)
    o = jk.attention(q, k, v, m, backend="cuda" if "cuda" in jk.available_backends(DEV)
                     else "cpp")
    dq, = torch.autograd.grad(o.float().sum(), (q,))
    tail = slice(B - 2, B)
    ref = jk.attention(q[tail].detach().float(), k[tail].float(), v[tail].float(),
                       jk.causal_mask([L] * 2, L).to(DEV), backend="reference")
    assert (o[tail].float() - ref).abs().max().item() < 3e-2
    assert torch.isfinite(dq).all()
