"""A/B of a CPU kernel switch that is an environment variable read per call (e.g.
``JANUS_CPU_SMALL_TILES_MAX_KEYS=0``: the forward's general softmax instead of its register
tile, the brgemm backward instead of the small-tile one), on the raw ops of one benchmark
case, call by call.

On a VM whose speed drifts by 10-50% within minutes, rounds of one variant then the other
measure the drift as much as the change; alternating A and B call by call (A B, then B A)
puts both under the same drift and cache state. Medians per variant:

    python -m benchmarks.env_ab --switch JANUS_CPU_SMALL_TILES_MAX_KEYS=0 [--fwd-only]
        [--family janus_nar] [--shape iwslt] [--dtype fp32] [--calls 120] [--isa avx2]

A = the variable unset, B = set. ``--isa`` caps our kernels only (``JANUS_CPU_ISA``).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch

from janus_kernels import cpu_isa

from .attention import HEAD_DIM, SHAPES, case_inputs, make_case

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _raw_ops(family: str, shape: str, dtype: torch.dtype, seed: int
             ) -> Dict[str, Callable[[], object]]:
    case = make_case(family, SHAPES[shape], torch.Generator().manual_seed(seed), "cpu")
    d = case.desc
    q, k, v, do = case_inputs(case, dtype, torch.Generator().manual_seed(seed), "cpu")
    ops = cpu_isa.level_ops()
    mask_args = (d.params, d.rank, d.q_split, int(d.kind), HEAD_DIM ** -0.5, 0.0, None, None,
                 0.0)
    out, lse = ops.flash_attention_fwd(q, k, v, *mask_args)
    return {"fwd": lambda: ops.flash_attention_fwd(q, k, v, *mask_args),
            "bwd": lambda: ops.flash_attention_bwd(do, q, k, v, out, lse, *mask_args)}


def run(switch: str, family: str = "janus_nar", shape: str = "iwslt", dtype: str = "fp32",
        calls: int = 120, fwd_only: bool = False, seed: int = 0) -> List[Dict[str, object]]:
    """One row per pass: median ms with the switch unset (A) and set (B), and A / B."""
    name, sep, value = switch.partition("=")
    if not name or not sep:
        raise ValueError(f"switch: expected NAME=VALUE, got {switch!r}")
    fns = _raw_ops(family, shape, DTYPES[dtype], seed)
    if fwd_only:
        fns = {"fwd": fns["fwd"]}
    saved = os.environ.get(name)

    def use(variant: str) -> None:
        if variant == "B":
            os.environ[name] = value
        else:
            os.environ.pop(name, None)

    times: Dict[str, Dict[str, List[float]]] = {p: {"A": [], "B": []} for p in fns}
    try:
        for variant in "AB":   # first calls of each variant: scratch, output pool
            use(variant)
            for fn in fns.values():
                fn()
        for i in range(calls):
            for p, fn in fns.items():
                for variant in ("AB" if i % 2 == 0 else "BA"):
                    use(variant)
                    t0 = time.perf_counter()
                    fn()
                    times[p][variant].append(time.perf_counter() - t0)
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved
    rows = []
    for p, t in times.items():
        a, b = (1e3 * statistics.median(t[v]) for v in "AB")
        rows.append({"pass": p, "A ms (unset)": a, f"B ms ({switch})": b, "A / B": a / b})
    return rows


def main(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--switch", required=True, help="NAME=VALUE, set for variant B")
    ap.add_argument("--family", default="janus_nar")
    ap.add_argument("--shape", default="iwslt", choices=sorted(SHAPES))
    ap.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    ap.add_argument("--calls", type=int, default=120)
    ap.add_argument("--fwd-only", action="store_true")
    ap.add_argument("--isa", choices=("avx2", "avx512", "amx"))
    args = ap.parse_args(argv)
    if args.isa:
        os.environ[cpu_isa.ENV_CAP] = args.isa
    rows = run(args.switch, args.family, args.shape, args.dtype, args.calls, args.fwd_only)
    print(f"{args.family}/{args.shape} {args.dtype}, {torch.get_num_threads()} threads, ISA "
          f"level {cpu_isa.describe()}")
    for r in rows:
        print("  ".join(f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}"
                        for k, v in r.items()))


if __name__ == "__main__":
    main()
