"""Timings of the GPU check: causal L = 2048 and the JANUS NAR/AUX mask (B = 64, N = 30 and
B = 8, N = 512), forward and forward + backward, for every attention backend against SDPA
(dense boolean mask; is_causal for causal) and compiled FlexAttention (a block mask built
from the same dense mask). On CPU (dry run) every implementation is called once, untimed."""
from __future__ import annotations

import time
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

import janus_kernels as jk

from .checks import inputs
from .config import Setup, attention_backends, janus_batch_lengths
from .report import Recorder, Timing


def shapes(s: Setup) -> List[Tuple[str, jk.MaskDescriptor, int, int, bool]]:
    """(name, mask, heads, head_dim, causal)."""
    out = []
    Lc, Bc, Hc = (16, 2, 2) if s.dry else (2048, 8, 16)
    out.append((f"causal B{Bc} H{Hc} L{Lc} d64", jk.causal_mask([Lc] * Bc, Lc), Hc, 64, True))
    for B, nmax in (((2, 12),) if s.dry else ((64, 30), (8, 512))):
        U, M = janus_batch_lengths(B, nmax)
        out.append((f"JANUS NAR/AUX B{B} N{nmax} H8 d64", jk.janus_nar_mask(U, M), 8, 64, False))
    return out


def _bench(fn: Callable[[], object], dry: bool) -> Optional[float]:
    """Median ms (triton.testing.do_bench), or None after one untimed call on CPU."""
    if dry:
        fn()
        return None
    import triton.testing
    return float(triton.testing.do_bench(fn, warmup=5, rep=40))


def _flex(q, k, v, mask, causal: bool, dense: torch.Tensor):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    if causal:
        def mod(b, h, i, j):
            return j <= i
    else:
        dm = dense[:, 0]

        def mod(b, h, i, j):
            return dm[b, i, j]
    bm = create_block_mask(mod, q.shape[0], None, mask.q_len, mask.kv_len, device=q.device)
    flex = torch.compile(flex_attention, dynamic=False)
    return lambda: flex(q, k, v, block_mask=bm)


def run(s: Setup, rec: Recorder, deadline: float) -> None:
    """Time every shape x implementation until `deadline` (Recorder seconds); later ones are
    recorded as skipped."""
    for name, mask, H, d, causal in shapes(s):
        mask = mask.to(s.device)
        q, k, v = inputs(s, mask.batch_size, H, H, mask.q_len, mask.kv_len, d)
        do = torch.randn(q.shape, device=s.device, dtype=q.dtype)
        dense = mask.materialize()[:, None]
        impls: Dict[str, Callable[[], Callable]] = {
            be: (lambda be=be: (lambda: jk.attention(q, k, v, mask, backend=be)))
            for be in attention_backends(s.device)}
        impls["sdpa"] = (lambda: (lambda: F.scaled_dot_product_attention(
            q, k, v, is_causal=True))) if causal else (
            lambda: (lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=dense)))
        if not s.dry:   # FlexAttention compiles per shape (tens of seconds); CPU: skipped
            impls["flex (compiled)"] = lambda: _flex(q, k, v, mask, causal, dense)
        for impl, make in impls.items():
            if rec.elapsed() > deadline:
                rec.add_timing(Timing(name, impl, None, None, "skipped: time budget"))
                continue
            t0 = time.perf_counter()
            try:
                fn = make()

                def fwd_bwd(fn=fn):
                    torch.autograd.grad(fn(), (q, k, v), do)
                fwd = _bench(fn, s.dry)
                fb = _bench(fwd_bwd, s.dry)
                rec.add_timing(Timing(name, impl, fwd, fb,
                                      f"({time.perf_counter() - t0:.0f} s incl. compile)"))
            except Exception as e:  # noqa: BLE001  (a failing baseline is reported, not fatal)
                rec.add_timing(Timing(name, impl, None, None,
                                      f"FAILED {type(e).__name__}: {str(e)[:100]}"))
        del q, k, v, do
