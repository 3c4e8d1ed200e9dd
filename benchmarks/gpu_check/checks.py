"""The correctness checks of the GPU check. Each check is a generator of
``(name, ok, detail)`` with ok True / False, or None for a sub-check that does not apply
(e.g. streams on CPU); __main__ times them and stops starting new ones past the budget."""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, Iterator, Optional, Tuple

import torch

import janus_kernels as jk

from .config import Setup, attention_backends

CheckResult = Tuple[str, Optional[bool], str]


# ================================================================== helpers
def inputs(s: Setup, B: int, H: int, Hkv: int, Lq: int, Lk: int, d: int, dtype=None,
           bshd: bool = False, grad: bool = True, seed: int = 0):
    """q, k, v on the device; bshd: (B, L, H, d) storage seen as (B, H, L, d), the model's."""
    dtype = dtype or s.dtype
    g = torch.Generator(device=s.device).manual_seed(seed)

    def make(h: int, L: int) -> torch.Tensor:
        shape = (B, L, h, d) if bshd else (B, h, L, d)
        t = torch.randn(shape, device=s.device, dtype=dtype, generator=g)
        return (t.transpose(1, 2) if bshd else t).requires_grad_(grad)
    return make(H, Lq), make(Hkv, Lk), make(Hkv, Lk)


def dense_reference(q, k, v, mask, scale: Optional[float] = None) -> torch.Tensor:
    """fp32 attention on the materialized mask (rows with no key give 0)."""
    allowed = mask.materialize().to(q.device)[:, None]
    G = q.shape[1] // k.shape[1]
    kk, vv = (t.float().repeat_interleave(G, 1) for t in (k, v))
    sc = q.shape[-1] ** -0.5 if scale is None else scale
    s = (q.float() @ kk.transpose(-1, -2)) * sc
    p = torch.softmax(s.masked_fill(~allowed, float("-inf")), -1).nan_to_num(0.0)
    return p @ vv


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-6)).item()


def fwd_bwd_errors(q, k, v, mask, backend: str, do: Optional[torch.Tensor] = None):
    """Relative errors of out, dq, dk, dv against the fp32 dense reference."""
    o = jk.attention(q, k, v, mask, backend=backend)
    do = torch.randn_like(o) if do is None else do
    g = torch.autograd.grad(o, (q, k, v), do)
    qf, kf, vf = (t.detach().float().requires_grad_() for t in (q, k, v))
    r = dense_reference(qf, kf, vf, mask)
    gr = torch.autograd.grad(r, (qf, kf, vf), do.float())
    return [rel_err(o, r)] + [rel_err(a, b) for a, b in zip(g, gr)]


def _fmt(errs) -> str:
    return "rel.err out/dq/dk/dv " + " ".join(f"{e:.1e}" for e in errs)


def _sync(s: Setup) -> None:
    if s.device == "cuda":
        torch.cuda.synchronize()


# ================================================================== the checks
def correctness(s: Setup) -> Iterator[CheckResult]:
    """Every backend x mask family x (d, heads) at a length of several tiles."""
    L = s.L
    U, M = torch.tensor([L // 3, L // 4]), torch.tensor([L // 4, L // 5])
    g = torch.Generator().manual_seed(0)
    masks = {
        "causal": jk.causal_mask([L, max(1, L - 37)], L),
        "janus_nar": jk.janus_nar_mask(U, M),
        "permutation": jk.permutation_mask(
            torch.stack([torch.randperm(L, generator=g) for _ in range(2)]).int(), [L, L - 5]),
        "sliding": jk.sliding_window_mask([L, L], max(2, L // 15), L),
    }
    for name, m in masks.items():
        m = m.to(s.device)
        for d, H, Hkv in ((64, 8, 8), (128, 8, 2)):
            for be in attention_backends(s.device):
                q, k, v = inputs(s, 2, H, Hkv, m.q_len, m.kv_len, d, bshd=True)
                errs = fwd_bwd_errors(q, k, v, m, be)
                yield f"{be} {name} d={d} H={H}/{Hkv}", max(errs) < s.tol, _fmt(errs)
    # what the CUDA C++ kernel does not cover goes to the default backend: d = 256, fp32
    m = masks["janus_nar"].to(s.device)
    for d, dt, tol in ((256, s.dtype, s.tol), (64, torch.float32, 1e-4)):
        q, k, v = inputs(s, 2, 4, 2, m.q_len, m.kv_len, d, dtype=dt, bshd=True)
        be = jk.default_backend("attention", s.device, dt, d)
        errs = fwd_bwd_errors(q, k, v, m, be)
        yield f"default ({be}) d={d} {dt}", max(errs) < tol, _fmt(errs)


def tf32(s: Setup) -> Iterator[CheckResult]:
    """fp32 Triton attention: IEEE dots by default, TF32 when torch's precision allows it."""
    if "triton" not in attention_backends(s.device):
        yield "triton fp32", None, "triton unavailable"
        return
    m = jk.causal_mask([s.L, s.L // 2], s.L).to(s.device)
    q, k, v = inputs(s, 2, 4, 4, s.L, s.L, 64, dtype=torch.float32)
    old = torch.get_float32_matmul_precision()
    try:
        for prec, tol in (("highest", 1e-4), ("high", 5e-3)):
            torch.set_float32_matmul_precision(prec)
            errs = fwd_bwd_errors(q, k, v, m, "triton")
            yield f"triton fp32 precision={prec}", max(errs) < tol, _fmt(errs)
    finally:
        torch.set_float32_matmul_precision(old)


def grid_limit(s: Setup) -> Iterator[CheckResult]:
    """B * H above 65535 (grid.y's limit) launches and is right."""
    B, H, L = s.grid
    m = jk.causal_mask([L] * B, L).to(s.device)
    tail = jk.causal_mask([L] * 2, L).to(s.device)
    for be in attention_backends(s.device):
        dt = torch.float32 if be == "triton" and s.device == "cuda" else s.dtype
        q, k, v = inputs(s, B, H, H, L, L, 64, dtype=dt)
        o = jk.attention(q, k, v, m, backend=be)
        dq, = torch.autograd.grad(o.float().sum(), (q,))
        _sync(s)
        r = dense_reference(q[-2:].detach(), k[-2:].detach(), v[-2:].detach(), tail)
        e = rel_err(o[-2:], r)
        ok = e < s.tol and bool(torch.isfinite(dq).all())
        yield f"{be} B*H = {B * H} ({dt})", ok, f"rel.err of the last samples {e:.1e}"
        del q, k, v, o, dq


def big_tensor(s: Setup) -> Iterator[CheckResult]:
    """Tensors of H * L * d >= 2^31 elements (int64 offsets); a sliding window keeps the
    compute small. Checked: the last head's last rows against a local dense reference."""
    H, L, d, w = s.big
    m = jk.sliding_window_mask([L], w, L).to(s.device)
    n_ref = min(L, 4 * w)
    local = jk.sliding_window_mask([n_ref + w], w, n_ref + w).to(s.device)
    for be in attention_backends(s.device):
        q, k, v = inputs(s, 1, H, H, L, L, d)
        o = jk.attention(q, k, v, m, backend=be)
        do = torch.zeros_like(o)
        do[:, -1, -n_ref:] = 1.0
        dq, dk, dv = torch.autograd.grad(o, (q, k, v), do)
        qs, ks, vs = (t[:, -1:, -(n_ref + w):].detach() for t in (q, k, v))
        r = dense_reference(qs, ks, vs, local)[:, :, -n_ref:]
        e = rel_err(o[:, -1:, -n_ref:], r)
        ok = e < s.tol and bool(torch.isfinite(dq[:, -1, -n_ref:]).all()) \
            and bool(dk[:, -1, -n_ref:].abs().sum() > 0)
        yield f"{be} {q.numel()} elements per tensor", ok, f"rel.err of the last rows {e:.1e}"
        del q, k, v, o, do, dq, dk, dv
        if s.device == "cuda":
            torch.cuda.empty_cache()


def side_stream(s: Setup) -> Iterator[CheckResult]:
    """Kernels run on the caller's current stream: a result produced on a busy side stream
    equals the default-stream one."""
    if s.device != "cuda":
        yield "side stream", None, "no streams on CPU"
        return
    L = s.stream_L
    m = jk.causal_mask([L] * 4, L).to(s.device)
    q, k, v = inputs(s, 4, 16, 16, L, L, 64, grad=False)
    for be in attention_backends(s.device):
        ref = jk.attention(q, k, v, m, backend=be)
        side = torch.cuda.Stream()
        big = torch.randn(8192, 8192, device="cuda", dtype=s.dtype)
        torch.cuda.synchronize()
        with torch.cuda.stream(side):
            for _ in range(4):
                big = big @ big * 1e-4          # keeps the side stream busy
            q2 = q * 1.0                        # produced on the side stream
            o = jk.attention(q2, k, v, m, backend=be)
        torch.cuda.synchronize()
        yield f"{be} on a side stream", torch.equal(o, ref), "bitwise equal to default stream"


def determinism(s: Setup) -> Iterator[CheckResult]:
    """The backward gives the same bits twice (exact resume, deterministic algorithms)."""
    L = s.det_L
    masks = {"causal": jk.causal_mask([L] * 4, L),
             "janus_nar": jk.janus_nar_mask([L // 3] * 4, [L // 4] * 4)}
    for name, m in masks.items():
        m = m.to(s.device)
        for be in attention_backends(s.device):
            q, k, v = inputs(s, 4, 8, 4, m.q_len, m.kv_len, 64)
            o = jk.attention(q, k, v, m, backend=be, dropout_p=0.1, seed=5)
            do = torch.randn_like(o)
            g1 = torch.autograd.grad(o, (q, k, v), do, retain_graph=True)
            g2 = torch.autograd.grad(o, (q, k, v), do)
            same = all(torch.equal(a, b) for a, b in zip(g1, g2))
            yield f"{be} {name} backward (dropout 0.1)", same, "bitwise equal across runs"


def compiled(s: Setup) -> Iterator[CheckResult]:
    """torch.compile(fullgraph) fwd + bwd on the (B, L, H, d).transpose(1, 2) layout matches
    eager, and opcheck passes for janus::attention_fwd on the device."""
    L = s.compile_L
    m = jk.janus_nar_mask([L // 3, L // 4], [L // 4, L // 5]).to(s.device)
    for be in attention_backends(s.device):
        def f(q, k, v, be=be):
            return jk.attention(q, k, v, m, backend=be).float().square().sum()
        q, k, v = inputs(s, 2, 8, 4, m.q_len, m.kv_len, 64, bshd=True)
        ge = torch.autograd.grad(f(q, k, v), (q, k, v))
        torch._dynamo.reset()
        fc = torch.compile(f, fullgraph=True, dynamic=False, backend=s.compile_backend)
        gc = torch.autograd.grad(fc(q, k, v), (q, k, v))
        e = max(rel_err(a, b) for a, b in zip(gc, ge))
        yield f"{be} torch.compile fwd+bwd bshd", e < 1e-2, f"vs eager rel.err {e:.1e}"
    from torch.library import opcheck
    for be in attention_backends(s.device):
        q, k, v = inputs(s, 2, 4, 4, m.q_len, m.kv_len, 64, bshd=True)
        opcheck(torch.ops.janus.attention_fwd,
                (q, k, v, m.params, m.rank, m.q_split, int(m.kind), 0.125, 0.0, None, be))
        yield f"opcheck janus::attention_fwd {be}", True, "bshd inputs"


def losses(s: Setup) -> Iterator[CheckResult]:
    """The loss ops on the device against the CPU ops (fp32): janus_loss, symmetric_kl,
    cross_entropy, forward and gradients."""
    N, M, V = s.loss
    g = torch.Generator().manual_seed(5)
    ar, nar, aux = (torch.randn(n, V, generator=g).mul(3) for n in (N, M, M))
    ar_t, m_t = torch.randint(0, V, (N,), generator=g), torch.randint(0, V, (M,), generator=g)
    ar_t[3], m_t[2] = -100, -100
    idx = torch.randperm(N, generator=g)[:M]
    cases: Dict[str, Callable] = {
        "janus_loss": lambda xs, dev, be: jk.janus_loss(
            *xs, ar_t.to(dev), m_t.to(dev), idx.to(dev), backend=be)[0],
        "symmetric_kl": lambda xs, dev, be: jk.symmetric_kl(xs[1], xs[2], backend=be).sum(),
        "cross_entropy": lambda xs, dev, be: jk.cross_entropy(
            xs[0], ar_t.to(dev), label_smoothing=0.1, backend=be).sum(),
    }

    def run(fn, dev, be):
        xs = [t.to(dev).requires_grad_() for t in (ar, nar, aux)]
        total = fn(xs, dev, be)
        grads = torch.autograd.grad(total, xs, allow_unused=True)
        return [total.detach().cpu()] + [None if x is None else x.cpu() for x in grads]

    cpu_be = jk.default_backend("janus_rows", "cpu")
    for name, fn in cases.items():
        ref = run(fn, "cpu", cpu_be)
        for be in attention_backends(s.device):
            try:
                got = run(fn, s.device, be)
            except ValueError as e:   # a backend name the loss ops do not know
                if "backend" in str(e):
                    yield f"{name} {be}", None, str(e)[:120]
                    continue
                raise
            errs = [rel_err(a, b) for a, b in zip(got, ref) if b is not None]
            yield (f"{name} {be} on {s.device} vs CPU {cpu_be}", max(errs) < 1e-4,
                   "rel.err loss/grads " + " ".join(f"{e:.1e}" for e in errs))


ALL = (correctness, tf32, grid_limit, big_tensor, side_stream, determinism, compiled, losses)


@contextlib.contextmanager
def no_tf32():
    """Checks compare fp32 references computed with torch.matmul: keep them IEEE."""
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old)
