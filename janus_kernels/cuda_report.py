"""Resource report of the CUDA kernels without a GPU: compile every csrc/cuda/*.cu with nvcc for
the given architectures and collect what ptxas says per kernel (registers, spill stores/loads,
stack frame, static shared memory), plus the dynamic shared memory and block shape each
attention kernel is launched with.

    python -m janus_kernels.cuda_report [--arch 80 90] [--json out.json]

Needs nvcc and the source tree (csrc/ next to the package, as in a checkout).
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
CUDA_DIR = ROOT / "csrc" / "cuda"
# The flags of the real build: torch's CUDAExtension defaults (cpp_extension.COMMON_NVCC_FLAGS)
# followed by setup.py's nvcc flags, plus the ptxas report.
NVCC_FLAGS = ["-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
              "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__",
              "--expt-relaxed-constexpr", "-O3", "-std=c++20", "--use_fast_math", "-lineinfo",
              "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
              "-Xptxas", "-warn-spills", "--resource-usage", f"-I{ROOT / 'csrc' / 'include'}"]

# Launch geometry of the attention kernels (kept in sync with FwdCfg / BwdCfg / DqCfg in
# csrc/cuda/attention_common.cuh; tests/test_nvcc_compile.py checks the emulation library's
# janus_cuda_attention_config against this table).
ATTENTION_GEOMETRY = {
    ("attention_fwd_kernel", 64): dict(block_m=64, block_n=64, threads=128, dyn_smem=27968),
    ("attention_fwd_kernel", 128): dict(block_m=64, block_n=64, threads=128, dyn_smem=52544),
    ("attention_bwd_dkdv_kernel", 64): dict(block_m=64, block_n=64, threads=128, dyn_smem=38720),
    ("attention_bwd_dkdv_kernel", 128): dict(block_m=32, block_n=64, threads=128,
                                             dyn_smem=53184),
    ("attention_bwd_dq_kernel", 64): dict(block_m=64, block_n=64, threads=128, dyn_smem=37184),
    ("attention_bwd_dq_kernel", 128): dict(block_m=64, block_n=64, threads=128, dyn_smem=69952),
}


@dataclass
class KernelUsage:
    source: str
    arch: str
    kernel: str
    registers: int
    spill_stores: int
    spill_loads: int
    stack_frame: int
    static_smem: int
    dyn_smem: Optional[int] = None
    threads: Optional[int] = None


_FN = re.compile(r"Function properties for (\S+)")
_PROPS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Compiling entry function '(\S+)' for '(sm_\d+\w*)'|Used (\d+) registers(.*)")


def _demangle(names: Sequence[str]) -> Dict[str, str]:
    filt = shutil.which("c++filt")
    if not filt or not names:
        return {n: n for n in names}
    out = subprocess.run([filt], input="\n".join(names), capture_output=True, text=True).stdout
    return dict(zip(names, out.splitlines()))


def parse_ptxas(text: str, source: str) -> List[KernelUsage]:
    """Per-kernel usage from `nvcc --resource-usage -Xptxas -warn-spills` output."""
    props: Dict[str, tuple] = {}
    cur_fn: Optional[str] = None
    entries = []
    arch = "?"
    entry = None
    for line in text.splitlines():
        m = _FN.search(line)
        if m:
            cur_fn = m.group(1)
            continue
        m = _PROPS.search(line)
        if m and cur_fn:
            props[(cur_fn, arch)] = tuple(int(x) for x in m.groups())
            continue
        m = _USED.search(line)
        if m and m.group(1):
            entry, arch = m.group(1), m.group(2)
        elif m and m.group(3) and entry:
            smem = re.search(r"(\d+) bytes smem", m.group(4) or "")
            entries.append((entry, arch, int(m.group(3)), int(smem.group(1)) if smem else 0))
            entry = None
    names = _demangle(sorted({e[0] for e in entries}))
    rows = []
    for fn, a, regs, smem in entries:
        stack, st, ld = props.get((fn, a), (0, 0, 0))
        nice = names.get(fn, fn)
        rows.append(KernelUsage(source, a, nice, regs, st, ld, stack, smem))
        for (kname, d), geo in ATTENTION_GEOMETRY.items():
            if f"{kname}<" in nice and re.search(rf"\b{d}>", nice):
                rows[-1].dyn_smem, rows[-1].threads = geo["dyn_smem"], geo["threads"]
    return rows


def compile_report(archs: Sequence[int] = (80, 90), sources: Optional[Sequence[Path]] = None,
                   out_dir: Optional[Path] = None) -> List[KernelUsage]:
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise RuntimeError("cuda_report: nvcc not found on PATH")
    if sources is None:
        sources = sorted(CUDA_DIR.glob("*.cu"))
    if not sources:
        raise RuntimeError(f"cuda_report: no .cu files under {CUDA_DIR} (needs a source checkout)")
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    tmp = Path(out_dir or tempfile.mkdtemp(prefix="janus_cuda_report_"))

    def one(src: Path):
        cmd = [nvcc, *NVCC_FLAGS, *gencode, "-Xcompiler", "-fPIC", "-c", str(src),
               "-o", str(tmp / (src.stem + ".o"))]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"nvcc failed on {src.name}:\n{r.stderr[-6000:]}")
        return parse_ptxas(r.stdout + r.stderr, src.name)

    with ThreadPoolExecutor(max_workers=2) as ex:
        rows = [r for part in ex.map(one, sources) for r in part]
    return rows


def format_table(rows: Sequence[KernelUsage]) -> str:
    head = (f"{'arch':6} {'kernel':58} {'regs':>4} {'spill st/ld':>11} {'stack':>5} "
            f"{'smem':>6} {'dyn smem':>8}")
    lines = [head, "-" * len(head)]
    for r in sorted(rows, key=lambda r: (r.arch, r.kernel)):
        k = re.sub(r"^void |janus::attn::|\(JanusAttn\w+\)|, int\)$|\(.*\)$", "", r.kernel)
        k = k.replace("__nv_bfloat16", "bf16").replace("__half", "f16")
        dyn = "" if r.dyn_smem is None else str(r.dyn_smem)
        lines.append(f"{r.arch:6} {k[:58]:58} {r.registers:4d} {r.spill_stores:5d}/"
                     f"{r.spill_loads:<5d} {r.stack_frame:5d} {r.static_smem:6d} {dyn:>8}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, nargs="+", default=[80, 90])
    ap.add_argument("--json", type=Path, help="write the rows as JSON here")
    args = ap.parse_args(argv)
    rows = compile_report(args.arch)
    print(format_table(rows))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1))
    spills = [r for r in rows if r.spill_stores or r.spill_loads]
    if spills:
        print(f"\n{len(spills)} kernel(s) spill registers", file=sys.stderr)
    return 1 if spills else 0


if __name__ == "__main__":
    sys.exit(main())
