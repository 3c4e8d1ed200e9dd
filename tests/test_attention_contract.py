"""The op contract of janus_kernels.attention and the losses (issue 13): the compiled kernels
validate every descriptor before touching memory, fakes match the real outputs' strides (so
compiled training works with the (B, L, H, d).transpose(1, 2) layout), lse is differentiable,
double backward raises, and inputs that used to give silent wrong answers raise."""
import pytest
import torch

import janus_kernels as jk
from janus_kernels import _ext, cpu_isa
from janus_kernels.losses import fused_linear_janus_loss, janus_loss
from janus_kernels.masks import Field

from attention_utils import make_qkv

needs_ext = pytest.mark.skipif(not _ext.available(), reason="compiled extension missing")
pytestmark = pytest.mark.usefixtures("cpu_isa_level")


def _raw_fwd(q, k, v, params, rank=None, q_split=None, kind=0):
    q_split = q.shape[2] if q_split is None else q_split
    return cpu_isa.level_ops().flash_attention_fwd(q, k, v, params, rank, q_split, kind, 0.5,
                                                   0.0, None)


@needs_ext
@pytest.mark.parametrize("field,value,match", [
    (Field.KV_LEN, 9, "KV_LEN = 9 must be in \\[0, Lk=7\\]"),      # reads past k/v: was garbage
    (Field.KV_LEN, -1, "KV_LEN = -1"),                            # was free(): invalid pointer
    (Field.PREFIX, -3, "PREFIX = -3 must be >= 0"),               # disagreed with materialize
    (Field.ROWS0, 8, "ROWS0 = 8"),
    (Field.WIDTH0, -1, "WIDTH0 = -1"),
    (Field.OFF0, 2 ** 31 - 1, "OFF0"),                            # r + OFF overflows int32
    (Field.HMIN0, -(2 ** 31), "HMIN0"),
])
def test_raw_kernel_rejects_bad_descriptors(field, value, match):
    mask = jk.causal_mask([5, 7], 7)
    q = torch.randn(2, 1, 7, 8)
    params = mask.params.clone()
    params[1, int(field)] = value
    before = params.clone()
    with pytest.raises(RuntimeError, match=match):
        _raw_fwd(q, q, q, params)
    assert torch.equal(params, before)


@needs_ext
def test_raw_kernel_rejects_bad_permutation_ranks():
    g = torch.Generator().manual_seed(0)
    mask = jk.permutation_mask(torch.stack([torch.randperm(6, generator=g)]), [6])
    q = torch.randn(1, 1, mask.q_len, 8)
    kv = torch.randn(1, 1, mask.kv_len, 8)
    rank = mask.rank.clone()
    rank[0, 2] = 2 ** 30
    with pytest.raises(RuntimeError, match="rank = 1073741824"):
        _raw_fwd(q, kv, kv, mask.params, rank, mask.q_split, 1)
    with pytest.raises(RuntimeError, match="mask_rank"):
        _raw_fwd(q, kv, kv, mask.params, rank[:, :3], mask.q_split, 1)


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gradients_are_contiguous_for_transposed_inputs_as_the_fake_says(dtype):
    """nn.MultiheadAttention / HF layout: (B, L, H, d).transpose(1, 2). The fake must promise
    the real strides, or compiled fwd+bwd fails with a stride assertion."""
    mask = jk.causal_mask([5, 7], 7)
    x = torch.randn(2, 7, 3, 16, dtype=dtype)
    q = x.transpose(1, 2)
    args = (q, q, q, mask.params, None, mask.q_split, 0, 0.25, 0.0, None, "cpu")
    dout = torch.randn(2, 3, 7, 16, dtype=dtype)
    o, lse = torch.ops.janus.attention_fwd(*args)
    grads = torch.ops.janus.attention_bwd(dout, q, q, q, o, lse, *args[3:])
    with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
        fq, fp = mode.from_tensor(q), mode.from_tensor(mask.params)
        fargs = (fp,) + args[4:]
        fo, flse = torch.ops.janus.attention_fwd(fq, fq, fq, *fargs)
        fgrads = torch.ops.janus.attention_bwd(mode.from_tensor(dout), fq, fq, fq, fo, flse,
                                               *fargs)
    assert o.stride() == fo.stride() and lse.stride() == flse.stride()
    for g, f in zip(grads, fgrads):
        assert g.stride() == f.stride() and g.shape == f.shape and g.dtype == f.dtype


@needs_ext
def test_compiled_training_with_the_transposed_layout():
    mask = jk.causal_mask([5, 7], 7)
    x = torch.randn(2, 7, 3, 16, requires_grad=True)

    def step(x):
        q = x.transpose(1, 2)
        return jk.attention(q, q, q, mask).square().sum()

    eager = torch.autograd.grad(step(x), x)[0]
    compiled = torch.autograd.grad(torch.compile(step, fullgraph=True)(x), x)[0]
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", [pytest.param("cpu", marks=needs_ext), "reference"])
def test_lse_is_differentiable(backend):
    """d lse_i / d s_ij = P_ij: a loss on lse gets the gradient of the dense logsumexp."""
    mask = jk.janus_nar_mask([5, 3], [3, 2])
    q, k, v, do = make_qkv(mask, H=2, Hkv=1, d=16)
    w = torch.randn(q.shape[:3])
    ins = [t.clone().requires_grad_() for t in (q, k, v)]
    o, lse = jk.attention(*ins, mask, return_lse=True, backend=backend)
    finite = torch.isfinite(lse)
    ((o * do).sum() + (torch.where(finite, lse, 0) * w).sum()).backward()
    # dense float64 reference
    ref = [t.double().clone().requires_grad_() for t in (q, k, v)]
    kr = ref[1].repeat_interleave(2, 1)
    vr = ref[2].repeat_interleave(2, 1)
    s = (ref[0] @ kr.transpose(-1, -2)) * 16 ** -0.5
    allowed = mask.materialize()[:, None]
    s = s.masked_fill(~allowed, float("-inf"))
    lse_ref = torch.logsumexp(s, -1)
    p = torch.softmax(s, -1).nan_to_num(0.0)
    o_ref = p @ vr
    ((o_ref * do.double()).sum() + (torch.where(finite, lse_ref, 0) * w.double()).sum()).backward()
    for a, b in zip(ins, ref):
        torch.testing.assert_close(a.grad.double(), b.grad, rtol=1e-4, atol=1e-4)


@needs_ext
def test_unused_lse_costs_no_second_backward_and_changes_nothing():
    mask = jk.causal_mask([6], 6)
    q = torch.randn(1, 2, 6, 8, requires_grad=True)
    o1 = jk.attention(q, q, q, mask)
    g1 = torch.autograd.grad(o1.sum(), q)[0]
    o2, _ = jk.attention(q, q, q, mask, return_lse=True)
    g2 = torch.autograd.grad(o2.sum(), q)[0]
    torch.testing.assert_close(g1, g2)


@needs_ext
def test_double_backward_raises_instead_of_zeros():
    mask = jk.causal_mask([6], 6)
    q = torch.randn(1, 2, 6, 8, requires_grad=True)
    (g,) = torch.autograd.grad(jk.attention(q, q, q, mask).square().sum(), q, create_graph=True)
    with pytest.raises(RuntimeError):
        g.sum().backward()


@pytest.mark.parametrize("scale", [float("inf"), float("nan"), 0.0, -1.0])
def test_non_finite_or_non_positive_scale_raises(scale):
    mask = jk.causal_mask([3], 3)
    q = torch.randn(1, 1, 3, 8)
    with pytest.raises(ValueError, match="scale"):
        jk.attention(q, q, q, mask, scale=scale)


# --------------------------------------------------------------------------------- losses
def _janus_inputs(M=4, N=9, V=30, D=8):
    g = torch.Generator().manual_seed(3)
    h_ar, h_m, h_x = (torch.randn(n, D, generator=g) for n in (N, M, M))
    W = torch.randn(V, D, generator=g)
    ar_t = torch.randint(0, V, (N,), generator=g)
    m_t = torch.randint(0, V, (M,), generator=g)
    return h_ar, h_m, h_x, W, ar_t, m_t


def test_fused_linear_ignored_rows_are_never_read():
    """NaN hidden states in ignored rows must not reach any gradient (0 * NaN = NaN)."""
    h_ar, h_m, h_x, W, ar_t, m_t = _janus_inputs()
    idx = torch.tensor([0, 2, 4, 6])
    ar_t[1] = -100
    m_t[3] = -100
    h_ar = h_ar.clone()
    h_ar[1] = float("nan")
    h_m = h_m.clone()
    h_m[3] = float("nan")
    h_x = h_x.clone()
    h_x[3] = float("nan")
    ins = [t.clone().requires_grad_() for t in (h_ar, h_m, h_x, W)]
    total, _ = fused_linear_janus_loss(*ins[:3], ins[3], ar_t, m_t, idx)
    total.backward()
    assert torch.isfinite(total)
    assert torch.isfinite(ins[3].grad).all(), "NaN in an ignored row reached grad_weight"
    assert torch.isfinite(ins[0].grad[[0, 2, 3]]).all()


@pytest.mark.parametrize("kl_rows,match", [
    (torch.tensor([True] * 6 + [False] * 3), "exactly M=4 True"),     # was silently truncated
    (torch.tensor([True] * 2 + [False] * 7), "exactly M=4 True"),     # was "value -1"
    (torch.tensor([0, 2, 4, 9]), "\\[0, N_ar=9\\)"),                   # was a bare IndexError
    (torch.tensor([0, -1, 4, 5]), "\\[0, N_ar=9\\)"),
])
def test_bad_kl_rows_raise_clearly(kl_rows, match):
    h_ar, h_m, h_x, W, ar_t, m_t = _janus_inputs()
    with pytest.raises(ValueError, match=match):
        fused_linear_janus_loss(h_ar, h_m, h_x, W, ar_t, m_t, kl_rows)
    with pytest.raises(ValueError, match=match):
        janus_loss(h_ar @ W.T, h_m @ W.T, h_x @ W.T, ar_t, m_t, kl_rows)
