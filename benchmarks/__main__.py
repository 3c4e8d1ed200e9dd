"""`python -m benchmarks [--quick | --full] [--only attention,loss,train_step] [--out DIR]`

Measures the machine's peaks, runs the selected suites, and writes DIR/results.json,
DIR/results.md (the BENCHMARKS.md tables; ``python -m benchmarks.report`` re-renders them)
and DIR/*.png. The standard set takes a few minutes on a quiet 2-core CPU; --quick is
CI-sized. Exit status 1 when a suite crashed (a contender that fails is only a table entry).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from typing import Optional, Sequence

import torch

from .common import (Settings, environment_info, error_line, machine_peaks, write_json,
                     _loadavg)
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
    ap.add_argument("--out", default=os.path.join("benchmarks", "results"),
                    help="output folder (default: benchmarks/results)")
    ap.add_argument("--device", default=None,
                    help="cpu or cuda (default: cuda when available, else cpu)")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU torch threads (default: all cores)")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per measurement")
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
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    mode = "quick" if args.quick else ("full" if args.full else "standard")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    settings = Settings.for_mode(mode, device=device, threads=args.threads,
                                 repeats=args.repeats, mem_limit_gb=args.mem_limit_gb,
                                 flex=args.flex, compile=args.compile, seed=args.seed,
                                 families=args.families, shapes=args.shapes,
                                 dtypes=args.dtypes)
    settings.apply()
    t0 = time.perf_counter()
    meta = environment_info(settings)
    print(f"benchmarks: mode {mode}, device {device}, {settings.threads} threads, "
          f"suites {','.join(args.only)} -> {args.out}", flush=True)
    machine = machine_peaks(settings)
    print("machine: " + ", ".join(f"{k} {v:.3g}" for k, v in machine.items()
                                  if isinstance(v, float)), flush=True)
    data = {"schema": 1, "meta": meta, "settings": vars(settings), "machine": machine,
            "suites": {}}
    failed = []
    for name in args.only:
        print(f"[{name}]", flush=True)
        mod = importlib.import_module(f"benchmarks.{name}")
        try:
            res = mod.run(settings, machine, log=lambda s: print(s, flush=True))
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
