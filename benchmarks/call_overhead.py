"""Per-call cost at tiny shapes: what a decoding step (one query row against a KV cache) or a
small training call pays in Python and dispatch, beside the kernel itself.

Contenders, timed interleaved (benchmarks/common.py), each a loop of ``CALLS`` calls:

* ``janus``: the public ``jk.attention(q, k, v, mask)`` (validation, backend choice, autograd
  node when gradients are needed);
* ``kernel``: the CPU kernel's raw op for the same call (``cpu_isa.level_ops()``), the floor
  the Python layer adds to;
* ``sdpa``: ``scaled_dot_product_attention`` with no mask (what an unmasked decode step costs
  in torch).

    python -m benchmarks.call_overhead [--quick] [--threads N]

Cases: decode (B=1, H=8, Lq=1, Lk=128, d=64, inference), and a small fwd+bwd (B=1, H=8,
L=32, d=64, causal). Times are per call, in microseconds.
"""
from __future__ import annotations

import argparse
from typing import Callable, Dict, Optional, Sequence

import torch
import torch.nn.functional as F

import janus_kernels as jk
from janus_kernels import cpu_isa

from .common import Settings, markdown_table, time_interleaved

CALLS = 200


def _loop(fn: Callable[[], object]) -> Callable[[], None]:
    def run() -> None:
        for _ in range(CALLS):
            fn()
    return run


def decode_contenders() -> Dict[str, Callable[[], None]]:
    B, H, Lk, d = 1, 8, 128, 64
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, H, 1, d, generator=g)
    k, v = (torch.randn(B, H, Lk, d, generator=g) for _ in range(2))
    mask = jk.full_mask(B, 1, Lk)
    ops, scale = cpu_isa.level_ops(), d ** -0.5

    def janus():
        with torch.no_grad():
            jk.attention(q, k, v, mask)

    def kernel():
        ops.flash_attention_fwd(q, k, v, mask.params, mask.rank, mask.q_split, int(mask.kind),
                                scale, 0.0, None)

    def sdpa():
        with torch.no_grad():
            F.scaled_dot_product_attention(q, k, v)
    return {"janus": _loop(janus), "kernel": _loop(kernel), "sdpa": _loop(sdpa)}


def train_contenders() -> Dict[str, Callable[[], None]]:
    B, H, L, d = 1, 8, 32, 64
    g = torch.Generator().manual_seed(0)
    q, k, v, do = (torch.randn(B, H, L, d, generator=g) for _ in range(4))
    leaves = [t.requires_grad_() for t in (q, k, v)]
    mask = jk.causal_mask([L], L)
    ops, scale = cpu_isa.level_ops(), d ** -0.5
    margs = (mask.params, mask.rank, mask.q_split, int(mask.kind), scale, 0.0, None)

    def janus():
        torch.autograd.grad(jk.attention(*leaves, mask), leaves, do)

    def kernel():
        o, lse = ops.flash_attention_fwd(q, k, v, *margs)
        ops.flash_attention_bwd(do, q, k, v, o, lse, *margs)

    def sdpa():
        torch.autograd.grad(F.scaled_dot_product_attention(*leaves, is_causal=True), leaves, do)
    return {"janus": _loop(janus), "kernel": _loop(kernel), "sdpa": _loop(sdpa)}


def run(settings: Settings) -> list:
    rows = []
    for name, make in (("decode step, inference (1 x 128 keys)", decode_contenders),
                       ("fwd+bwd, causal L=32", train_contenders)):
        timings = time_interleaved(make(), settings)
        row = {"case": name, **{k: 1e3 * t.ms / CALLS for k, t in timings.items()}}
        row["python"] = row["janus"] - row["kernel"]
        row["x_sdpa"] = row["sdpa"] / row["janus"]
        rows.append(row)
    return rows


COLUMNS = [("case", "case"), ("janus", "janus us"), ("kernel", "raw kernel us"),
           ("python", "python + dispatch us"), ("sdpa", "sdpa us"), ("x_sdpa", "x sdpa")]


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.call_overhead", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="quick timing (smoke)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    settings = Settings.for_mode("quick" if args.quick else "standard", threads=args.threads,
                                 call_budget_s=0.0)
    settings.apply()
    rows = run(settings)
    print(f"* {torch.get_num_threads()} threads, CPU ISA level {cpu_isa.describe()}")
    print(markdown_table(rows, COLUMNS, {"case": str}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
