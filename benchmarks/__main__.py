"""`python -m benchmarks [--quick | --full] [--isa LEVEL] [--only attention,loss,train_step]
[--out DIR]`

Measures the machine's peaks, runs the selected suites, and writes DIR/results.json,
DIR/results.md (the BENCHMARKS.md tables; ``python -m benchmarks.report`` re-renders them)
and DIR/*.png. Progress: one line per measured case on stderr, with the elapsed time. Exit
status 1 when a suite crashed (a contender that fails is only a table entry, with its error).

--isa avx2|avx512|amx runs the whole benchmark at that CPU ISA level: ours capped by
JANUS_CPU_ISA, the baselines by ATEN_CPU_CAPABILITY, MKL_ENABLE_INSTRUCTIONS and
ONEDNN_MAX_CPU_ISA (benchmarks/isa.py). Those are read when torch loads, so the run happens in
a subprocess started with them set; its results go to benchmarks/results/isa_LEVEL by default
and every table header names the level. --isa native (the default) caps nothing.

The standard set is sized to finish within 10 minutes on a 2-core Zen 2. Estimate: the
per-call times of the standard run in BENCHMARKS.md (2 Sapphire Rapids cores, 165 s) scaled to
a Zen 2 (fp32 GEMM 386 -> 85.6 GFLOP/s: x4 for the baselines, the losses and the training
step, x2.5 for our attention kernels, which ran at 100 vs 246 useful GFLOP/s; eager bf16 x35,
i.e. 24 s for the long512 eager fwd+bwd, and SDPA bf16 assumed as bad) and replayed through
the timing rules (repeats stop after 1 s of calls, baselines time-boxed at 2 s per call, at
most 45 s of cold torch.compile per suite): about 6 minutes (attention 2, losses 1.5,
training step 2, peaks and start 0.5) plus at most 1.5 minutes of cold compiles, against 48
minutes with the old settings on that machine. --quick is CI-sized (~30 s).
"""
from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
import time
from typing import Optional, Sequence

import torch

from .common import Settings, environment_info, error_line, write_json, _loadavg
from .isa import ISA_CHOICES, cap_env, level_mismatch, needs_subprocess
from .peaks import machine_peaks
from .report import plots, render

SUITES = ("attention", "loss", "train_step")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="CI-sized shapes (< ~60 s)")
    size.add_argument("--full", action="store_true",
                      help="every mask family on every shape, sequences up to 2048")
    ap.add_argument("--only", default=",".join(SUITES),
                    help=f"comma-separated suites to run (default: all of {','.join(SUITES)})")
    ap.add_argument("--isa", default="native", choices=ISA_CHOICES,
                    help="CPU ISA level to measure at, ours and the baselines capped alike "
                         "(default: native, nothing capped)")
    ap.add_argument("--out", default=None,
                    help="output folder (default: benchmarks/results, or "
                         "benchmarks/results/isa_LEVEL with --isa LEVEL)")
    ap.add_argument("--device", default=None,
                    help="cpu or cuda (default: cuda when available, else cpu)")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU torch threads (default: all cores)")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per measurement")
    ap.add_argument("--call-budget-s", type=float, default=None,
                    help="per-call budget: a call over it is measured once, a baseline "
                         "predicted over twice it is skipped (0: off; default 2 s standard)")
    ap.add_argument("--compile-budget-s", type=float, default=None,
                    help="per suite, seconds of cold torch.compile before compiled contenders "
                         "are skipped (< 0: unlimited; default 45 standard)")
    ap.add_argument("--mem-limit-gb", type=float, default=None,
                    help="skip dense baselines estimated to need more (default 8)")
    ap.add_argument("--flex", action=argparse.BooleanOptionalAction, default=None,
                    help="run compiled FlexAttention (default: on, off in --quick)")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="run torch.compile'd loss baselines (default: on, off in --quick)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--families", default=None,
                    help="only these attention mask families / loss names (comma-separated)")
    ap.add_argument("--shapes", default=None,
                    help="attention shapes to run every family on, e.g. long512 (comma-separated)")
    ap.add_argument("--dtypes", default=None, help="only these dtypes, e.g. fp32")
    args = ap.parse_args(argv)
    split = lambda v: tuple(x.strip() for x in v.split(",") if x.strip())  # noqa: E731
    args.only = list(split(args.only))
    from .attention import FAMILIES, SHAPES
    from .loss import LOSSES
    allowed = {"families": FAMILIES + LOSSES, "shapes": tuple(SHAPES), "dtypes": ("fp32", "bf16")}
    for name, ok in allowed.items():
        if getattr(args, name) is not None:
            vals = split(getattr(args, name))
            bad = [v for v in vals if v not in ok]
            if bad:
                ap.error(f"--{name}: unknown {bad}; choose from {list(ok)}")
            setattr(args, name, vals)
    bad = [s for s in args.only if s not in SUITES]
    if bad:
        ap.error(f"--only: unknown suite(s) {bad}; choose from {list(SUITES)}")
    if args.out is None:
        args.out = os.path.join("benchmarks", "results")
        if args.isa != "native":
            args.out = os.path.join(args.out, f"isa_{args.isa}")
    return args


_CHILD = "JANUS_BENCH_ISA_CHILD"


def _rerun_capped(level: str, argv: Sequence[str]) -> int:
    """Run ``python -m benchmarks argv`` in a subprocess whose libraries are capped at
    ``level`` (they read their caps when torch loads, which this process did already)."""
    if os.environ.get(_CHILD):
        raise SystemExit(f"--isa {level}: the subprocess still lacks the caps; not recursing")
    env = cap_env(level, os.environ)
    env[_CHILD] = "1"
    caps = " ".join(f"{k}={env[k]}" for k in sorted(set(env) - {_CHILD})
                    if env.get(k) != os.environ.get(k))
    print(f"benchmarks: --isa {level}: running in a subprocess with {caps}", file=sys.stderr,
          flush=True)
    return subprocess.run([sys.executable, "-m", "benchmarks", *argv], env=env).returncode


def _progress(t0: float):
    """The suites' log: one line per case on stderr, prefixed with the elapsed time."""
    def log(line: str) -> None:
        print(f"[{time.perf_counter() - t0:6.1f} s] {line.strip()}", file=sys.stderr, flush=True)
    return log


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if needs_subprocess(args.isa, os.environ):
        return _rerun_capped(args.isa, argv)
    mode = "quick" if args.quick else ("full" if args.full else "standard")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    settings = Settings.for_mode(mode, device=device, threads=args.threads,
                                 repeats=args.repeats, mem_limit_gb=args.mem_limit_gb,
                                 call_budget_s=args.call_budget_s,
                                 compile_budget_s=args.compile_budget_s,
                                 flex=args.flex, compile=args.compile, seed=args.seed,
                                 families=args.families, shapes=args.shapes,
                                 dtypes=args.dtypes)
    settings.apply()
    t0 = time.perf_counter()
    log = _progress(t0)
    meta = environment_info(settings)
    meta["isa"]["requested"] = args.isa
    mismatch = level_mismatch(args.isa, meta["isa"])
    if mismatch:
        print(f"benchmarks: {mismatch}", file=sys.stderr)
        return 2
    print(f"benchmarks: mode {mode}, device {device}, {settings.threads} threads, ISA "
          f"{meta['isa'].get('ours_level') or meta['isa'].get('ours')} (ATen "
          f"{meta['isa']['aten_cpu_capability']}), suites {','.join(args.only)} -> {args.out}",
          flush=True)
    machine = machine_peaks(settings)
    print("machine: " + ", ".join(f"{k} {v:.3g}" for k, v in machine.items()
                                  if isinstance(v, float)), flush=True)
    for dt in ("fp32", "bf16"):
        print(f"machine: {dt} compute peak {machine[f'peak_{dt}_gflops'] or float('nan'):.4g} "
              f"GFLOP/s from {machine[f'peak_{dt}_source']}", flush=True)
    log("machine peaks measured")
    data = {"schema": 2, "meta": meta, "settings": settings.as_dict(), "machine": machine,
            "suites": {}}
    failed = []
    for name in args.only:
        log(f"[{name}]")
        mod = importlib.import_module(f"benchmarks.{name}")
        try:
            res = mod.run(settings, machine, log=log)
            data["suites"][name] = res.as_dict()
        except Exception as e:  # noqa: BLE001 - one broken suite must not lose the others
            print(f"  suite {name} failed: {error_line(e, 400)}", flush=True)
            failed.append(name)
            data["suites"][name] = {"rows": [], "notes": [],
                                    "skipped": [f"suite {name}: failed: {error_line(e, 400)}"]}
    meta["loadavg_end"] = _loadavg()
    meta["seconds"] = time.perf_counter() - t0
    os.makedirs(args.out, exist_ok=True)
    written, problems = plots(data, args.out)
    for p in problems:
        print(f"plots: {p}")
    json_path = os.path.join(args.out, "results.json")
    md_path = os.path.join(args.out, "results.md")
    write_json(json_path, data)
    md = render(data, ".")
    with open(md_path, "w") as f:
        f.write(md)
    print(f"wrote {json_path}, {md_path}" + (f", {len(written)} PNG" if written else "")
          + f" in {meta['seconds']:.0f} s")
    if failed:
        print(f"suites that crashed: {failed} (their errors are in the report)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
