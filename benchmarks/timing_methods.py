"""How the cache state a call starts from moves the small-shape comparison: ours
(``jk.attention`` fwd+bwd) against SDPA + dense mask on the JANUS NAR/AUX pass, timed three
ways in one process:

* ``interleaved``: ours, SDPA, ours, SDPA, ... (what ``python -m benchmarks`` does): each call
  starts after the other's, SDPA's call leaving MBs of dirty lines (its scores, its gradients)
  that ours must write back before its reads fit;
* ``warm``: each alone, call after call (its own data cache-resident where it fits);
* ``flushed``: a 256 MB write before every call of either (cold caches full of dirty lines
  for both: the worst case, the same for both).

At the IWSLT shape our kernels move ~30 MB (forward) and ~55 MB (backward), the cache is a
few MB per core, and 2 cores draw ~20 GB/s from DRAM: how much of our time is memory depends
on what ran before, much more than SDPA's (compute-bound) time does.

    python -m benchmarks.timing_methods [--shape iwslt] [--repeats 40]

For the AVX2 level, cap the baselines too: ``ATEN_CPU_CAPABILITY=avx2
MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 JANUS_CPU_ISA=avx2``.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

import janus_kernels as jk

from .attention import SHAPES, case_inputs, make_case
from .common import markdown_table

METHODS = ("interleaved", "warm", "flushed")
FLUSH_FLOATS = 64 << 20   # 256 MB


def _contenders(shape: str, seed: int) -> Dict[str, Callable[[], None]]:
    case = make_case("janus_nar", SHAPES[shape], torch.Generator().manual_seed(seed), "cpu")
    d = case.desc
    q, k, v, do = case_inputs(case, torch.float32, torch.Generator().manual_seed(seed), "cpu")
    for t in (q, k, v):
        t.requires_grad_()
    allowed = case.allowed[:, None]

    def ours() -> None:
        q.grad = k.grad = v.grad = None
        jk.attention(q, k, v, d).backward(do)

    def sdpa() -> None:
        q.grad = k.grad = v.grad = None
        F.scaled_dot_product_attention(q, k, v, attn_mask=allowed).backward(do)

    return {"ours": ours, "sdpa_dense": sdpa}


def run(shape: str = "iwslt", repeats: int = 40, seed: int = 0,
        flush_floats: int = FLUSH_FLOATS) -> List[Dict[str, object]]:
    """One row per method: median ms of each contender and SDPA's time over ours."""
    fns = _contenders(shape, seed)
    junk = torch.empty(flush_floats)

    def timed(fn: Callable[[], None], flush: bool = False) -> float:
        if flush:
            junk.fill_(1.0)
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    for fn in fns.values():   # warm-up: first calls, allocator, output pool
        fn()
        fn()
    times: Dict[str, Dict[str, List[float]]] = {m: {n: [] for n in fns} for m in METHODS}
    for _ in range(repeats):
        for name, fn in fns.items():
            times["interleaved"][name].append(timed(fn))
    for name, fn in fns.items():
        for _ in range(repeats):
            times["warm"][name].append(timed(fn))
    for _ in range(repeats):
        for name, fn in fns.items():
            times["flushed"][name].append(timed(fn, flush=True))
    rows = []
    for method in METHODS:
        med = {n: 1e3 * statistics.median(t) for n, t in times[method].items()}
        rows.append({"method": method, "ours ms": med["ours"],
                     "sdpa_dense ms": med["sdpa_dense"],
                     "sdpa / ours": med["sdpa_dense"] / med["ours"]})
    return rows


def main(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="iwslt", choices=sorted(SHAPES))
    ap.add_argument("--repeats", type=int, default=40)
    args = ap.parse_args(argv)
    rows = run(args.shape, args.repeats)
    print(f"janus_nar/{args.shape} fp32 fwd+bwd, {torch.get_num_threads()} threads, "
          f"ours at ISA level {jk.cpu_isa.describe()}")
    cols = [(k, k) for k in ("method", "ours ms", "sdpa_dense ms", "sdpa / ours")]
    print(markdown_table(rows, cols))


if __name__ == "__main__":
    main()
