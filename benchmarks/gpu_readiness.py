"""GPU-readiness report, produced without a GPU (`make gpu-report`):

1. every Triton attention kernel and config AOT-compiled for sm_80 / sm_90: registers,
   spill/stack bytes, shared memory (janus_kernels.triton.aot, in a subprocess);
2. every CUDA C++ kernel compiled by nvcc for sm_80 / sm_90: registers, spills, stack
   (janus_kernels.cuda_report);
3. the tile-skip fraction of each GPU kernel's tiling on the benchmark shapes: the share of
   the dense (row tile x key tile) grid never touched, and the share computed without the
   predicate, from ``MaskDescriptor.tile_class`` (no GPU needed: it is a property of the
   mask and the tile sizes).

    python -m benchmarks.gpu_readiness [--out benchmarks/results/gpu_readiness.md]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List

import torch

import janus_kernels as jk
from janus_kernels.masks import TileClass

SHAPES = {"iwslt (B=64, Nmax=30)": (64, 30), "medium (B=16, Nmax=256)": (16, 256),
          "long (B=8, Nmax=512)": (8, 512)}
TILINGS = {"triton fwd 128x64": (128, 64), "cuda fwd 64x64": (64, 64),
           "triton dq 64x64": (64, 64), "triton dkdv 16x64": (16, 64)}


def janus_batch(B: int, nmax: int, seed: int = 0):
    """The benchmark batch: N uniform in [Nmax/2, Nmax], M = int(0.55 N), U = N + 2 - M."""
    g = torch.Generator().manual_seed(seed)
    N = torch.randint(nmax // 2, nmax + 1, (B,), generator=g)
    M = (0.55 * N).long()
    return N + 2 - M, M


def tile_skip_table() -> str:
    lines = ["| mask | shape | tiling | tiles skipped | tiles full (no predicate) | partial |",
             "|---|---|---|---|---|---|"]
    for shape, (B, nmax) in SHAPES.items():
        U, M = janus_batch(B, nmax)
        T = torch.randint(nmax // 2, nmax + 1, (B,), generator=torch.Generator().manual_seed(1)) + 1
        for name, desc in (("janus_nar", jk.janus_nar_mask(U, M)), ("janus_ar", jk.janus_ar_mask(T))):
            for tiling, (bm, bn) in TILINGS.items():
                tc = desc.tile_class(bm, bn)
                n = tc.numel()
                frac = {c: (tc == int(c)).sum().item() / n for c in TileClass}
                lines.append(f"| {name} | {shape} | {tiling} | {frac[TileClass.SKIP]:.1%} | "
                             f"{frac[TileClass.FULL]:.1%} | {frac[TileClass.PARTIAL]:.1%} |")
    return "\n".join(lines)


def triton_rows() -> List[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "aot.json")
        env = dict(os.environ, TRITON_INTERPRET="0")
        r = subprocess.run([sys.executable, "-m", "janus_kernels.triton.aot", "--json", out,
                            "--dtypes", "bf16", "fp16", "fp32", "tf32", "--head-dims", "64",
                            "128",
                            "--jobs", "2"], env=env, capture_output=True, text=True)
        if not os.path.exists(out):  # rc != 0 alone means "some kernel spills": keep the table
            raise RuntimeError(f"triton AOT failed: {r.stderr[-2000:]}")
        return json.load(open(out))


def triton_table(rows: List[dict]) -> str:
    lines = ["| kernel | dtype | d | config | arch | regs | spill/stack bytes | smem KB | mma |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("kind", 0) != 0 or r.get("dropout"):
            continue
        lines.append(f"| {r['kernel']} | {r['dtype']} | {r['head_dim']} | {r['config']} | "
                     f"sm_{r['arch']} | {r['regs']} | {r['spill_stack_bytes']} | "
                     f"{r['smem'] / 1024:.0f} | {r['mma']} |")
    return "\n".join(lines)


def cuda_table() -> str:
    from janus_kernels import cuda_report
    rows = cuda_report.compile_report()
    lines = ["| source | kernel | arch | regs | spill st/ld | stack | static smem |",
             "|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r.source, r.kernel, r.arch)):
        k = r.kernel.replace("__nv_bfloat16", "bf16").replace("__half", "f16")
        k = k.replace("void ", "").split("(")[0].replace("janus::", "") or r.kernel
        lines.append(f"| {r.source} | `{k[:70]}` | {r.arch} | {r.registers} | "
                     f"{r.spill_stores}/{r.spill_loads} | {r.stack_frame} | {r.static_smem} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="benchmarks/results/gpu_readiness.md")
    args = ap.parse_args(argv)
    parts = ["## GPU readiness (compiled here, no GPU)", "",
             "### Tile-skip fractions of the GPU tilings on the benchmark shapes", "",
             tile_skip_table(), ""]
    try:
        parts += ["### Triton attention kernels (AOT, triton "
                  f"{__import__('triton').__version__})", "", triton_table(triton_rows()), ""]
    except Exception as e:  # noqa: BLE001 - report, don't crash the whole report
        parts += [f"Triton AOT unavailable: {e}", ""]
    try:
        parts += ["### CUDA C++ kernels (nvcc, -Xptxas -warn-spills)", "", cuda_table(), ""]
    except Exception as e:  # noqa: BLE001
        parts += [f"nvcc report unavailable: {e}", ""]
    text = "\n".join(parts)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
