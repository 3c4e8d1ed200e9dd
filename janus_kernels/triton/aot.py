"""Ahead-of-time compile of the Triton attention kernels for real GPUs, without a GPU.

Every kernel (forward, backward preprocess, dK/dV, dQ) is compiled with each shipped config of
``attention.CONFIGS`` through ``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch,
32))``: ttir -> ttgir -> llir -> PTX -> cubin with the ptxas bundled in triton. The cubin's
registers and stack frame (spills land there) come from the bundled ``cuobjdump
--dump-resource-usage``; shared memory from the compile metadata.

The signatures mirror what the JIT would specialize for contiguous 16-byte-aligned tensors
with head dims that are multiples of 16: last-dim strides are the constant 1, pointers and
the other strides carry a divisibility-16 hint.

Usage (must run with TRITON_INTERPRET unset/0; the CLI re-executes itself if needed)::

    python -m janus_kernels.triton.aot [--json out.json] [--arch 80 90]
        [--dtypes fp16 bf16 fp32 tf32] [--head-dims 64 128]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, Iterable, List, Optional

#: Shared memory per block (bytes) a kernel may use, per compute capability.
SMEM_LIMIT = {80: 164 * 1024, 86: 100 * 1024, 89: 100 * 1024, 90: 227 * 1024}
KERNELS = ("fwd", "pre", "dkdv", "dq")
# "tf32": float32 inputs with TF32 tensor-core dots (the TF32 constexpr, see attention._dot)
_TORCH_DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32", "tf32": "float32"}
_PTR_DTYPES = {"fp16": "fp16", "bf16": "bf16", "fp32": "fp32", "tf32": "fp32"}


def _kernel_fn(name: str):
    from . import attention as A
    return {"fwd": A._attn_fwd, "pre": A._bwd_preprocess, "dkdv": A._attn_bwd_dkdv,
            "dq": A._attn_bwd_dq}[name]


def _arg_type(name: str, dtype: str) -> str:
    if name in ("PARAMS", "RANK"):
        return "*i32"
    if name in ("LSE", "DELTA", "REL", "DREL"):
        return "*fp32"
    if name in ("Q", "K", "V", "O", "DO", "DQ", "DK", "DV"):
        return "*" + dtype
    if name in ("qk_scale", "scale", "keep_scale", "softcap", "inv_softcap"):
        return "fp32"
    return "i32"


def kernel_spec(kernel: str, dtype: str, head_dim: int, kind: int = 0, dropout: bool = False,
                mods: bool = False):
    """(fn, signature, constexprs, attrs, num_warps, num_stages, config) of one kernel
    variant, with the config the launcher would pick; `mods`: both score modifiers on."""
    import torch
    from . import attention as A
    fn = _kernel_fn(kernel)
    d_pad = A.head_dim_pad(head_dim)
    bm, bn, warps, stages = A.get_config(kernel, d_pad, getattr(torch, _TORCH_DTYPES[dtype]),
                                         tf32=dtype == "tf32", mods=mods)
    consts: Dict[str, object] = {"D": head_dim, "D_PAD": d_pad, "BLOCK_M": bm}
    if kernel != "pre":
        consts.update(BLOCK_N=bn, KIND=kind, DROPOUT=dropout, TF32=dtype == "tf32",
                      HAS_SOFTCAP=mods, HAS_REL_BIAS=mods)
    signature, attrs = {}, {}
    for idx, name in enumerate(fn.arg_names):
        if name.startswith("stride_") and name.endswith("d"):
            consts[name] = 1                      # contiguous last dim, as the JIT specializes
        if name in consts:
            signature[name] = "constexpr"
            continue
        ty = _arg_type(name, _PTR_DTYPES[dtype])
        signature[name] = ty
        if ty.startswith("*") or (name.startswith("stride_") and name != "stride_rank"):
            attrs[(idx,)] = [["tt.divisibility", 16]]
    return fn, signature, consts, attrs, warps, stages, (bm, bn, warps, stages)


def _cuobjdump() -> Optional[str]:
    import triton
    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    return path if os.path.exists(path) else shutil.which("cuobjdump")


def resource_usage(cubin: bytes) -> Dict[str, int]:
    """REG / STACK / LOCAL / SHARED of the (single) kernel in a cubin via cuobjdump."""
    tool = _cuobjdump()
    if tool is None:
        raise RuntimeError("cuobjdump not found (neither bundled with triton nor on PATH)")
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
        path = f.name
    try:
        text = subprocess.run([tool, "--dump-resource-usage", path], check=True,
                              capture_output=True, text=True).stdout
    finally:
        os.unlink(path)
    out = {}
    for key in ("REG", "STACK", "LOCAL", "SHARED"):
        m = re.search(rf"\b{key}:(\d+)", text)
        if m is None:
            raise RuntimeError(f"cuobjdump output has no {key}: {text!r}")
        out[key.lower()] = int(m.group(1))
    return out


def _config_str(kernel: str, cfg) -> str:
    bm, bn, warps, stages = cfg
    tiles = f"BM{bm}" if kernel == "pre" else f"BM{bm}xBN{bn}"
    return f"{tiles} w{warps} s{stages}"


def compile_one(kernel: str, dtype: str, head_dim: int, arch: int, kind: int = 0,
                dropout: bool = False, mods: bool = False) -> Dict[str, object]:
    """Compile one kernel variant for sm_<arch>; return its resource row."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    fn, sig, consts, attrs, warps, stages, cfg = kernel_spec(kernel, dtype, head_dim, kind,
                                                             dropout, mods)
    t0 = time.perf_counter()
    src = ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
    k = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                       options={"num_warps": warps, "num_stages": stages})
    secs = time.perf_counter() - t0
    cubin = k.asm.get("cubin")
    if not cubin:
        raise RuntimeError(f"{kernel} {dtype} d={head_dim} sm_{arch}: no cubin produced")
    ptx = k.asm.get("ptx", "")
    use = resource_usage(cubin)
    return {
        "kernel": kernel, "dtype": dtype, "head_dim": head_dim, "arch": arch, "kind": kind,
        "dropout": dropout, "mods": mods, "config": _config_str(kernel, cfg),
        "regs": use["reg"], "spill_stack_bytes": use["stack"] + use["local"],
        "smem": int(k.metadata.shared), "smem_limit": SMEM_LIMIT.get(arch, 48 * 1024),
        "mma": "wgmma" if "wgmma" in ptx else ("mma.sync" if "mma.sync" in ptx else "none"),
        "mma_tf32": bool(re.search(r"(wgmma|mma)\S*\.tf32", ptx)),
        "compile_s": round(secs, 2),
    }


def variants(dtypes: Iterable[str], head_dims: Iterable[int], archs: Iterable[int]):
    """Every shipped config: all kernels x dtypes x head dims x archs for the window kind
    without dropout, plus the permutation and dropout variants of the bf16 kernels."""
    out = []
    for arch in archs:
        for dtype in dtypes:
            for d in head_dims:
                for kernel in KERNELS:
                    out.append((kernel, dtype, d, arch, 0, False))
        if "bf16" in dtypes:
            for d in head_dims:
                for kernel in ("fwd", "dkdv", "dq"):
                    out.append((kernel, "bf16", d, arch, 1, True))
    return out


def mods_variants(dtypes: Iterable[str], head_dims: Iterable[int], archs: Iterable[int]):
    """The score-modifier kernels (both modifiers on; MODS_CONFIGS) of every dtype and head
    dim for the window kind without dropout."""
    return [(kernel, dtype, d, arch, 0, False, True) for arch in archs for dtype in dtypes
            for d in head_dims for kernel in ("fwd", "dkdv", "dq")]


def run(dtypes=("fp16", "bf16", "fp32"), head_dims=(64, 128), archs=(80, 90),
        jobs: int = 1, mods: bool = False) -> List[Dict[str, object]]:
    todo = variants(dtypes, head_dims, archs)
    if mods:
        todo += mods_variants(dtypes, head_dims, archs)
    if jobs > 1:
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(jobs) as ex:
            return list(ex.map(_compile_tuple, todo))
    return [_compile_tuple(t) for t in todo]


def _compile_tuple(t):
    return compile_one(*t)


def format_table(rows: List[Dict[str, object]]) -> str:
    cols = ("kernel", "dtype", "head_dim", "kind", "dropout", "mods", "config", "arch", "regs",
            "spill_stack_bytes", "smem", "mma")
    lines = [" | ".join(cols), " | ".join("---" for _ in cols)]
    for r in rows:
        lines.append(" | ".join(str(r[c]) for c in cols))
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if os.environ.get("TRITON_INTERPRET") == "1":  # the interpreter cannot compile: re-exec
        env = dict(os.environ, TRITON_INTERPRET="0")
        return subprocess.call([sys.executable, "-m", "janus_kernels.triton.aot", *argv], env=env)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", help="write the rows to this JSON file")
    ap.add_argument("--arch", type=int, nargs="+", default=[80, 90])
    ap.add_argument("--dtypes", nargs="+", default=["fp16", "bf16", "fp32", "tf32"],
                    choices=sorted(_TORCH_DTYPES))
    ap.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--mods", action="store_true",
                    help="also the score-modifier kernels (softcap / rel_bias on)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    rows = run(args.dtypes, args.head_dims, args.arch, args.jobs, args.mods)
    print(format_table(rows))
    bad = [r for r in rows if r["spill_stack_bytes"] or r["smem"] > r["smem_limit"]]
    print(f"\n{len(rows)} kernels compiled in {time.perf_counter() - t0:.1f} s; "
          f"{len(bad)} with spills or shared memory over the limit")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
