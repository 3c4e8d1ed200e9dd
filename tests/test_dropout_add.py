"""janus_kernels.dropout_add (residual dropout, Philox mask regenerated in the backward) on
every backend that serves it here -- the compiled CPU kernels at each ISA level and the
reference -- against independent oracles: a scalar Philox4x32-10 written out below (checked
on the Random123 known-answer vectors) for the mask, float64 arithmetic for the values.

Tolerance rule (COMMON.md): error vs the float64 oracle <= 2x (3x for gradients) the error of
the same formula evaluated in the input precision, plus a tiny absolute floor."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import janus_kernels as jk
from janus_kernels import _ext
from janus_kernels.backends import BackendError
from janus_kernels.dropout_add import _dropout_add

pytestmark = pytest.mark.usefixtures("cpu_isa_level")

BACKENDS = [pytest.param("cpu", marks=pytest.mark.skipif(not _ext.available(),
                                                         reason="extension not built")),
            "reference"]
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
SHAPES = [(0,), (1,), (7,), (113, 5), (203, 3, 2), (3, 64), (65,)]
M32 = 0xFFFFFFFF


# ------------------------------------------------------------------- scalar oracle
def philox(c, k):
    """Philox4x32-10 on Python ints (Salmon et al.)."""
    c, (k0, k1) = list(c), k
    for _ in range(10):
        p0, p1 = 0xD2511F53 * c[0], 0xCD9E8D57 * c[2]
        c = [((p1 >> 32) ^ c[1] ^ k0) & M32, p1 & M32, ((p0 >> 32) ^ c[3] ^ k1) & M32, p0 & M32]
        k0, k1 = (k0 + 0x9E3779B9) & M32, (k1 + 0xBB67AE85) & M32
    return c


def keep_oracle(n, p, seed):
    """The documented stream: element e -> call 16 (e >> 6) + (e & 15), word (e >> 4) & 3."""
    s = seed & ((1 << 64) - 1)
    thr = min(int(p * 2 ** 32), M32)
    out = []
    for e in range(n):
        call = 16 * (e >> 6) + (e & 15)
        u = philox((call & M32, call >> 32, 0x44524F50, 0), (s & M32, s >> 32))[(e >> 4) & 3]
        out.append(u >= thr)
    return torch.tensor(out, dtype=torch.bool)


def test_philox_known_answers():
    """Random123's kat_vectors for philox4x32_10."""
    assert philox((0, 0, 0, 0), (0, 0)) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    assert philox((M32,) * 4, (M32, M32)) == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]


def _oracle(y, residual, keep, p):
    out = y.double() * keep.double() / (1 - p)
    return out if residual is None else residual.double() + out


def _same_precision(y, residual, keep, p):
    out = y * (keep.to(y.dtype) / (1 - p))
    return out if residual is None else residual + out


def _err(a, ref):
    return (a.double() - ref).abs().max().item() if a.numel() else 0.0


# ------------------------------------------------------------------------- tests
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n", [1, 7, 64, 113, 203, 1031])
@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.9])
def test_mask_is_the_documented_philox_stream(backend, n, p):
    seed = 0x1234_5678_9ABC_DEF0 if n % 2 else -7
    out = jk.dropout_add(torch.ones(n), None, p, seed=seed, backend=backend)
    keep = keep_oracle(n, p, seed)
    assert torch.equal(out != 0, keep)
    assert torch.equal(out[keep], torch.full((int(keep.sum()),), 1 / (1 - p)).float())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("with_residual", [True, False], ids=["residual", "plain"])
def test_forward_and_backward_against_float64(backend, dtype, shape, with_residual):
    p, seed = 0.3, 11
    g = torch.Generator().manual_seed(3)
    y = torch.randn(shape, generator=g).to(dtype).requires_grad_(True)
    r = torch.randn(shape, generator=g).to(dtype).requires_grad_(True) if with_residual else None
    y0 = y.detach().clone()
    out = jk.dropout_add(y, r, p, seed=seed, backend=backend)
    assert out.dtype == dtype and out.shape == y.shape and out.is_contiguous()
    keep = keep_oracle(y.numel(), p, seed).view(shape)
    ref = _oracle(y.detach(), None if r is None else r.detach(), keep, p)
    same = _same_precision(y.detach(), None if r is None else r.detach(), keep, p)
    assert _err(out, ref) <= 2 * _err(same, ref) + 1e-300
    grad = torch.randn(shape, generator=g).to(dtype)
    out.backward(grad)
    assert torch.equal(y.detach(), y0)   # inputs untouched
    gy_ref = grad.double() * keep.double() / (1 - p)
    gy_same = grad * (keep.to(dtype) / (1 - p))
    assert _err(y.grad, gy_ref) <= 3 * _err(gy_same, gy_ref) + 1e-300
    if r is not None:
        assert torch.equal(r.grad, grad)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cpu_kernels_equal_the_reference_bit_for_bit(dtype):
    if not _ext.available():
        pytest.skip("extension not built")
    g = torch.Generator().manual_seed(0)
    y, r = (torch.randn(37, 203, generator=g).to(dtype) for _ in range(2))
    for p in (0.05, 0.3, 0.7):
        a = jk.dropout_add(y, r, p, seed=99, backend="cpu")
        b = jk.dropout_add(y, r, p, seed=99, backend="reference")
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_keep_rate_seeds_and_generator(backend):
    n, p = 200_003, 0.3
    out = jk.dropout_add(torch.ones(n), None, p, seed=1, backend=backend)
    kept = (out != 0).double().mean().item()
    assert abs(kept - (1 - p)) < 5 * (p * (1 - p) / n) ** 0.5
    again = jk.dropout_add(torch.ones(n), None, p, seed=1, backend=backend)
    other = jk.dropout_add(torch.ones(n), None, p, seed=2, backend=backend)
    assert torch.equal(out, again) and not torch.equal(out, other)
    torch.manual_seed(5)
    a = jk.dropout_add(torch.ones(999), None, p, backend=backend)
    torch.manual_seed(5)
    b = jk.dropout_add(torch.ones(999), None, p, backend=backend)
    assert torch.equal(a, b)


def test_no_dropout_in_eval_or_at_p_zero():
    y, r = torch.randn(5, 7), torch.randn(5, 7)
    state = torch.get_rng_state()
    assert torch.equal(jk.dropout_add(y, r, 0.5, training=False), r + y)
    assert torch.equal(jk.dropout_add(y, r, 0.0), r + y)
    out = jk.dropout_add(y, None, 0.5, training=False)
    assert torch.equal(out, y) and out.data_ptr() != y.data_ptr()
    assert torch.equal(torch.get_rng_state(), state)   # no draw


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs_follow_their_logical_order(backend):
    g = torch.Generator().manual_seed(1)
    y, r = torch.randn(9, 13, generator=g).t(), torch.randn(13, 9, generator=g)
    out = jk.dropout_add(y, r, 0.4, seed=8, backend=backend)
    assert torch.equal(out, jk.dropout_add(y.contiguous(), r, 0.4, seed=8, backend=backend))


@pytest.mark.parametrize("bad, match", [
    (dict(p=1.0), "p must be"), (dict(p=-0.1), "p must be"), (dict(p="0.3"), "p must be"),
    (dict(p=True), "p must be"), (dict(residual=torch.zeros(4, 6)), "residual must match"),
    (dict(residual=torch.zeros(4, 5, dtype=torch.float64)), "residual must match"),
    (dict(residual=torch.zeros(4, 5, device="meta")), "residual must match"),
    (dict(y=torch.zeros(4, 5, dtype=torch.int64)), "floating-point"),
    (dict(seed=1.5), "seed must be an int"), (dict(backend="nope"), "backend must be one of"),
])
def test_bad_inputs_get_clear_errors(bad, match):
    args = dict(y=torch.randn(4, 5), residual=torch.randn(4, 5), p=0.3)
    args.update(bad)
    with pytest.raises((TypeError, ValueError), match=match):
        jk.dropout_add(args.pop("y"), args.pop("residual"), **args)


def test_a_backend_that_cannot_serve_the_call_says_why():
    with pytest.raises(BackendError, match="dropout_add"):
        jk.dropout_add(torch.randn(3), None, 0.3, backend="cuda")


def test_torch_compile_fullgraph_matches_eager():
    torch._dynamo.reset()

    def f(y, r):
        return jk.dropout_add(y * 2, r, 0.25, seed=17).sum(-1)

    y, r = torch.randn(6, 40), torch.randn(6, 40)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(y, r), f(y, r))


def test_opcheck():
    seed = torch.tensor([5], dtype=torch.int64)
    for backend in ("cpu", "reference"):
        if backend == "cpu" and not _ext.available():
            continue
        y = torch.randn(7, 9, requires_grad=True)
        torch.library.opcheck(_dropout_add, (y, torch.randn(7, 9), 0.3, seed, backend))


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_float64(backend):
    y = torch.randn(11, 7, dtype=torch.float64, requires_grad=True)
    r = torch.randn(11, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b: jk.dropout_add(a, b, 0.4, seed=3, backend=backend), (y, r))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 70), min_size=1, max_size=3), st.floats(0.01, 0.95),
       st.integers(-2 ** 63, 2 ** 64 - 1), st.sampled_from(DTYPES))
def test_property_cpu_equals_reference_forward_and_backward(shape, p, seed, dtype):
    if not _ext.available():
        return
    y = torch.randn(shape).to(dtype).requires_grad_(True)
    r = torch.randn(shape).to(dtype)
    a = jk.dropout_add(y, r, p, seed=seed, backend="cpu")
    b = jk.dropout_add(y, r, p, seed=seed, backend="reference")
    assert torch.equal(a, b)
    g = torch.randn(shape).to(dtype)
    (ga,) = torch.autograd.grad(a, y, g)
    (gb,) = torch.autograd.grad(b, y, g)
    assert torch.equal(ga, gb)
