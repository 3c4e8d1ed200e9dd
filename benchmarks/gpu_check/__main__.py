"""CLI of the GPU check (see __init__.py): python -m benchmarks.gpu_check [--dry] ..."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[2]

# pytest groups: (name, pytest arguments). GPU: compiled Triton at real sizes, the CUDA kernels
# through the torch ops; dry: the interpreter and the CPU emulation of the CUDA kernels.
GPU_TESTS: Sequence[Tuple[str, List[str]]] = (
    ("CUDA kernels (real sizes, determinism)", ["tests/test_cuda_gpu.py"]),
    # (a subset: every Triton variant compiles once per process, seconds each)
    ("Triton attention (compiled, real sizes)", ["tests/test_triton_attention.py",
                                                 "tests/test_triton_grid.py", "-k",
                                                 "real_sizes or grid or tf32 or gqa"]),
    ("Triton JANUS rows vs the CPU op", ["tests/test_triton_janus_loss.py",
                                         "-k", "raw_rows"]),
    ("Triton residual dropout: the CPU kernels' bits", ["tests/test_triton_dropout.py"]),
)
DRY_TESTS: Sequence[Tuple[str, List[str]]] = (
    ("CUDA kernels (emulated): determinism", ["tests/test_cuda_emu_determinism.py"]),
    ("CUDA kernels (emulated): JANUS, causal, dropout",
     ["tests/test_cuda_emu.py", "-k", "janus_nar or causal_113 or keep_mask"]),
    ("Triton (interpreter): grids, TF32 switch, JANUS masks",
     ["tests/test_triton_grid.py", "tests/test_triton_attention.py", "-k",
      "grid or tf32 or janus_nar"]),
    ("chunking policy", ["tests/test_chunking.py"]),
)


def _pytest(rec, name: str, args: List[str], timeout: float) -> None:
    from .report import Result
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *args]
    try:
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                           timeout=max(10.0, timeout))
        lines = [ln for ln in p.stdout.strip().splitlines() if ln.strip()]
        summary = lines[-1] if lines else p.stderr.strip()[-200:]
        if p.returncode not in (0, 5):   # 5: nothing collected (all skipped is fine too)
            failed = [ln for ln in lines if ln.startswith(("FAILED", "ERROR"))]
            summary = "; ".join(failed[:3]) + " | " + summary
        status = "pass" if p.returncode in (0, 5) else "fail"
    except subprocess.TimeoutExpired:
        status, summary = "fail", f"timed out after {timeout:.0f} s"
    rec.add(Result("pytest", name, status, summary, time.perf_counter() - t0))


def _checks(rec, setup, deadline: float) -> None:
    from . import checks
    from .report import Result
    with checks.no_tf32():
        for check in checks.ALL:
            if rec.elapsed() > deadline:
                rec.add(Result("check", check.__name__, "skip", "time budget"))
                continue
            t0 = time.perf_counter()
            try:
                for name, ok, detail in check(setup):
                    status = "skip" if ok is None else ("pass" if ok else "fail")
                    rec.add(Result(check.__name__, name, status, detail,
                                   time.perf_counter() - t0))
                    t0 = time.perf_counter()
                    if rec.elapsed() > deadline:   # the rest of this check: skipped
                        rec.add(Result(check.__name__, "remaining sub-checks", "skip",
                                       "time budget"))
                        break
            except Exception as e:  # noqa: BLE001  (reported; the other checks still run)
                rec.add(Result(check.__name__, "raised", "fail",
                               f"{type(e).__name__}: {str(e)[:300]}", time.perf_counter() - t0))


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dry", action="store_true",
                    help="CPU: tiny shapes, Triton interpreter, CUDA kernels emulated")
    ap.add_argument("--report", default=None, help="markdown report path (default: "
                    "benchmarks/results/gpu_check.md, dry: build/gpu_check_dry.md)")
    ap.add_argument("--budget-s", type=float, default=260.0,
                    help="seconds for tests + checks + timings (the build is not included)")
    ap.add_argument("--skip-pytest", action="store_true")
    args = ap.parse_args(argv)

    if args.dry:   # before any Triton kernel module is imported (read at decoration time)
        os.environ["TRITON_INTERPRET"] = "1"
        sys.path.insert(0, str(ROOT / "tests"))
        __import__("_triton_interp_fix").apply()
        import warnings   # numpy's inf / nan warnings inside the interpreter
        warnings.filterwarnings("ignore", category=RuntimeWarning)
    import torch

    import janus_kernels as jk
    from . import timing
    from .config import make_setup
    from .report import Recorder, markdown

    if not args.dry and not torch.cuda.is_available():
        print("gpu_check: no CUDA device; run `make gpu-check-dry` on CPU", file=sys.stderr)
        return 2
    setup = make_setup(args.dry)
    rec = Recorder()
    budget = args.budget_s
    print(f"gpu_check: {'dry run on CPU' if args.dry else torch.cuda.get_device_name(0)}, "
          f"backends {jk.available_backends(setup.device)}, extension "
          f"{jk._ext.build_info()}, budget {budget:.0f} s", flush=True)

    if not args.skip_pytest:
        groups = DRY_TESTS if args.dry else GPU_TESTS
        for name, targs in groups:
            remaining = 0.45 * budget - rec.elapsed()
            _pytest(rec, name, targs, remaining)
    _checks(rec, setup, deadline=0.75 * budget)
    timing.run(setup, rec, deadline=budget)

    report = Path(args.report) if args.report else ROOT / (
        "build/gpu_check_dry.md" if args.dry else "benchmarks/results/gpu_check.md")
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(markdown(rec, setup.device, args.dry, jk._ext.build_info()))
    bad = rec.failed
    print(f"\ngpu_check: {len(rec.results)} checks, {len(bad)} failed, "
          f"{rec.elapsed():.0f} s; report: {report}", flush=True)
    for r in bad:
        print(f"  FAILED {r.phase}: {r.name} {r.detail[:200]}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
