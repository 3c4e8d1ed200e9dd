"""Shared machinery of the benchmark suite: settings, timing, peak memory, the machine's own
peaks measured in the same run, result containers, and the JSON / Markdown / PNG writers.

Timing (``time_fn``, ``time_interleaved``)
    warm-up calls, then ``repeats`` timed calls (fewer when a per-measurement time budget
    runs out, never fewer than ``min_repeats``); reports the median, min, max and the spread
    (max - min) / median. The contenders of one comparison are timed interleaved (one call
    of each per round, the order rotated every round), so load changes during the comparison
    hit them alike and none always runs after the same neighbour (cache state).
    * CPU: ``time.perf_counter`` around each call with the torch thread count fixed; the
      process CPU time of the same calls gives the utilisation
      ``cpu_util = cpu_time / (wall * threads)``: about 1 on a quiet machine, well below 1
      when another process takes the cores (the run is then noisy: compare within a run).
    * CUDA: CUDA events around each call (``cpu_util`` is None).

Peak memory (``peak_memory_mb``)
    * CPU: tracemalloc does not see torch's allocations, so this is the peak resident set
      above the starting one: free arena memory is returned first (``malloc_trim``), the
      kernel's high-water mark VmHWM is reset by writing 5 to /proc/self/clear_refs, the call
      runs, and peak = VmHWM - VmRSS(before). Inputs that exist before the call are not
      counted; outputs and everything the call allocates (grads included) are.
    * CUDA: ``max_memory_allocated`` above ``memory_allocated`` before the call.

Per-call time-boxing: see benchmarks/timebox.py (the timing loop drops a contender after a
call longer than ``Settings.call_budget_s``). Machine peaks: benchmarks/peaks.py.
"""
from __future__ import annotations

import argparse
import ctypes
import dataclasses
import datetime
import gc
import importlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import zlib
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .isa import runtime_info
from .timebox import CallBudget

__all__ = ["Settings", "Timing", "time_fn", "time_interleaved", "time_rows", "time_once",
           "first_call", "settle_first_call", "peak_memory_mb", "environment_info",
           "SuiteResult", "optional_import", "write_json",
           "markdown_table", "fmt_num", "bar_chart", "synchronize", "dtype_name",
           "case_generator", "progress_cell", "table_main"]

MB = 1024 * 1024


# ============================================================================ settings
@dataclasses.dataclass
class Settings:
    """How much to measure. ``mode`` is "quick" (CI smoke run), "standard" or "full"."""

    mode: str = "standard"
    device: str = "cpu"
    threads: int = 0                # CPU torch threads (0: os.cpu_count())
    warmup: int = 1
    repeats: int = 5
    min_repeats: int = 2
    budget_s: float = 3.0           # per measurement; repeats stop once it is spent
    call_budget_s: float = 0.0      # per call (benchmarks/timebox.py); 0: no time-boxing
    compile_budget_s: float = -1.0  # per suite, torch.compile first calls; < 0: unlimited
    mem_limit_gb: float = 8.0       # dense baselines estimated above this are skipped
    flex: bool = True               # compiled FlexAttention contender
    compile: bool = True            # torch.compile'd loss baselines
    seed: int = 0
    # optional filters (None: everything the mode plans), e.g. to re-run one case
    families: Optional[Tuple[str, ...]] = None
    shapes: Optional[Tuple[str, ...]] = None
    dtypes: Optional[Tuple[str, ...]] = None

    def selected(self, family: Optional[str] = None, shape: Optional[str] = None,
                 dtype: Optional[str] = None) -> bool:
        """Whether a planned item passes the --families / --shapes / --dtypes filters."""
        return ((self.families is None or family is None or family in self.families)
                and (self.shapes is None or shape is None or shape in self.shapes)
                and (self.dtypes is None or dtype is None or dtype in self.dtypes))

    @classmethod
    def for_mode(cls, mode: str, **overrides: Any) -> "Settings":
        base = {
            # --quick: no torch.compile (a cold inductor start alone takes ~30 s here)
            "quick": dict(warmup=1, repeats=2, min_repeats=1, budget_s=0.5, flex=False,
                          compile=False, call_budget_s=5.0),
            # standard: sized to finish within 10 minutes on a 2-core Zen 2 (the estimate
            # is in benchmarks/__main__.py's docstring)
            "standard": dict(warmup=1, repeats=5, min_repeats=2, budget_s=1.0,
                             call_budget_s=2.0, compile_budget_s=45.0),
            "full": dict(warmup=2, repeats=7, min_repeats=3, budget_s=6.0, call_budget_s=15.0),
        }
        if mode not in base:
            raise ValueError(f"mode: expected one of {sorted(base)}, got {mode!r}")
        kw = dict(base[mode], mode=mode)
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kw)

    @property
    def is_cuda(self) -> bool:
        return torch.device(self.device).type == "cuda"

    def as_dict(self) -> Dict[str, Any]:
        """The settings as plain values (for the results JSON)."""
        return dataclasses.asdict(self)

    def call_budget(self) -> "CallBudget":
        """A fresh time-box tracker for one suite run (benchmarks/timebox.py)."""
        return CallBudget(self.call_budget_s, self.compile_budget_s)

    def apply(self) -> None:
        """Fix the thread count (CPU) so every measurement of the run uses the same."""
        if not self.threads:
            self.threads = os.cpu_count() or 1
        torch.set_num_threads(self.threads)


def dtype_name(dt: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16",
            torch.float64: "fp64"}.get(dt, str(dt).replace("torch.", ""))


def case_generator(seed: int, label: str) -> torch.Generator:
    """A generator seeded from the run's seed and the case's name, so a case draws the same
    lengths and inputs whether it runs alone (filters) or within the whole set."""
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(label.encode()))


def synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


# ============================================================================== timing
@dataclasses.dataclass
class Timing:
    """Milliseconds per call: median, min, max over ``repeats`` calls."""

    ms: float
    ms_min: float
    ms_max: float
    repeats: int
    cpu_util: Optional[float]       # CPU only: cpu_time / (wall * threads)
    timeboxed: bool = False         # stopped after a call over the per-call budget

    @property
    def spread_pct(self) -> float:
        return 100.0 * (self.ms_max - self.ms_min) / self.ms if self.ms > 0 else 0.0

    def as_dict(self) -> Dict[str, Any]:
        return {"ms": self.ms, "ms_min": self.ms_min, "ms_max": self.ms_max,
                "spread_pct": self.spread_pct, "repeats": self.repeats,
                "cpu_util": self.cpu_util, "timeboxed": self.timeboxed}


def _one_call(fn: Callable[[], Any], cuda: bool) -> Tuple[float, Optional[float]]:
    """(wall seconds, CPU seconds or None) of one call."""
    if cuda:
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3, None
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    t1, c1 = time.perf_counter(), time.process_time()
    return t1 - t0, c1 - c0


def time_interleaved(fns: Dict[str, Callable[[], Any]], settings: Settings, *,
                     warmup: Optional[int] = None, repeats: Optional[int] = None,
                     budget_s: Optional[float] = None) -> Dict[str, Timing]:
    """Time several functions in rounds, one call of each per round (in an order rotated
    every round), so a change of machine load during the measurement hits all of them alike
    (their ratios stay meaningful). Each
    function leaves the rounds once it has ``repeats`` calls, or once its own calls have
    used ``budget_s`` and it has ``min_repeats``, or right after one call longer than
    ``settings.call_budget_s`` (time-boxed: ``Timing.timeboxed``). The garbage collector is
    off while timing, so a collection triggered by one function is not charged to another."""
    warmup = settings.warmup if warmup is None else warmup
    repeats = settings.repeats if repeats is None else repeats
    budget = settings.budget_s if budget_s is None else budget_s
    cuda = settings.is_cuda
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    synchronize(settings.device)
    walls: Dict[str, List[float]] = {k: [] for k in fns}
    cpus: Dict[str, List[float]] = {k: [] for k in fns}

    call_limit = settings.call_budget_s
    boxed = {k: False for k in fns}

    def active(k: str) -> bool:
        n = len(walls[k])
        if n and call_limit > 0 and walls[k][-1] > call_limit:
            boxed[k] = True
            return False
        return n < repeats and not (sum(walls[k]) > budget and n >= settings.min_repeats)

    was_enabled = gc.isenabled()
    gc.disable()
    rnd = 0
    try:
        while True:
            todo = [k for k in fns if active(k)]
            if not todo:
                break
            # rotate the order every round: a call runs slower after one that leaves the
            # caches full of dirty lines (the dense baselines write MBs of scores; measured
            # +50% for our IWSLT-shaped forward), so no contender may always follow the same one
            rnd += 1
            todo = todo[rnd % len(todo):] + todo[:rnd % len(todo)]
            for k in todo:
                w, c = _one_call(fns[k], cuda)
                walls[k].append(w)
                if c is not None:
                    cpus[k].append(c)
    finally:
        if was_enabled:
            gc.enable()
    threads = max(settings.threads or torch.get_num_threads(), 1)
    out: Dict[str, Timing] = {}
    for k in fns:
        ms = [1e3 * w for w in walls[k]]
        util = sum(cpus[k]) / (sum(walls[k]) * threads) if cpus[k] and sum(walls[k]) else None
        out[k] = Timing(statistics.median(ms), min(ms), max(ms), len(ms), util, boxed[k])
    return out


def time_fn(fn: Callable[[], Any], settings: Settings, *, warmup: Optional[int] = None,
            repeats: Optional[int] = None, budget_s: Optional[float] = None) -> Timing:
    """Time one function (see the module docstring and ``time_interleaved``)."""
    return time_interleaved({"fn": fn}, settings, warmup=warmup, repeats=repeats,
                            budget_s=budget_s)["fn"]


def time_rows(rows: Dict[str, Dict[str, Any]], fns: Dict[str, Callable[[], Any]],
              settings: Settings) -> None:
    """Time the prepared contenders of one comparison interleaved and fill in their result
    rows (``rows[name]``): timing fields, and ``peak_mb`` where the row has none yet. The
    first call was made already (a warm-up), so one warm-up fewer is done here. A contender
    that raises is marked failed and the others are timed alone."""
    warm = max(settings.warmup - 1, 0)
    try:
        timings = time_interleaved(fns, settings, warmup=warm)
    except Exception:  # noqa: BLE001 - find out which one fails, time the rest alone
        timings = {}
        for name, fn in fns.items():
            try:
                timings[name] = time_fn(fn, settings, warmup=warm)
            except Exception as e:  # noqa: BLE001
                rows[name].update(status="failed", note=f"failed: {error_line(e)}")
    for name, t in timings.items():
        row = rows[name]
        row.update(t.as_dict())
        if row.get("peak_mb") is None and not t.timeboxed:   # no extra call of a slow one
            try:
                row["peak_mb"] = peak_memory_mb(fns[name], settings.device)
            except Exception:  # noqa: BLE001 - the timing stands without the memory
                row["peak_mb"] = None


def settle_first_call(budget: CallBudget, row: Dict[str, Any], *, compiles: bool,
                      baseline: bool, kind: Any, work: float, seconds: float,
                      label: str) -> bool:
    """Apply the time-box rules (benchmarks/timebox.py) to a contender's untimed first call:
    a call that compiled is charged to the compile budget; a baseline's first call over the
    per-call budget becomes its only measurement (written into ``row``). True when it did,
    i.e. the contender is not to be timed further."""
    if compiles:
        budget.add_compile(seconds)
        return False
    if baseline and budget.observe(kind, work, seconds, label):
        ms = 1e3 * seconds
        row.update(Timing(ms, ms, ms, 1, None, timeboxed=True).as_dict(),
                   note=budget.timebox_note(seconds))
        return True
    return False


def time_once(fn: Callable[[], Any], device: str) -> float:
    """Wall seconds of one call (first calls: compile time, mask build time)."""
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def first_call(fn: Callable[[], Any], device: str, measure_memory: bool
               ) -> Tuple[Any, float, Optional[float]]:
    """The untimed first call: (its output, its wall seconds, its peak memory in MiB or
    None). Measuring the memory on this call saves one call per measurement; callers whose
    first call compiles (or allocates one-time workspaces, CUDA) measure memory on a later
    call instead."""
    out: List[Any] = []
    mem: List[Optional[float]] = []
    if measure_memory:
        secs = time_once(lambda: mem.append(peak_memory_mb(lambda: out.append(fn()), device)),
                         device)
    else:
        secs = time_once(lambda: out.append(fn()), device)
    return out[0], secs, (mem[0] if mem else None)


# ============================================================================== memory
_LIBC = None


def _libc():
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
        except OSError:
            _LIBC = False
    return _LIBC or None


def _proc_status_kb(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_memory_mb(fn: Callable[[], Any], device: str) -> Optional[float]:
    """Peak memory (MiB) that one call of ``fn`` adds on top of what exists before it; None
    where it cannot be measured (no /proc, clear_refs not writable). Tensors are freed by
    reference counting, so no gc.collect() here (it costs ~0.1 s per call with torch
    loaded); the suites collect once per case."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / MB
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)          # give freed arena pages back, so RSS = live memory
    if not _reset_hwm():
        return None
    rss0 = _proc_status_kb("VmRSS")
    fn()
    hwm = _proc_status_kb("VmHWM")
    if rss0 is None or hwm is None:
        return None
    return max(hwm - rss0, 0) / 1024.0


# ========================================================================= environment
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> Optional[str]:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here,
                           capture_output=True, text=True, timeout=5)
        return r.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _loadavg() -> Optional[List[float]]:
    try:
        return [float(x) for x in open("/proc/loadavg").read().split()[:3]]
    except (OSError, ValueError):
        return None


def environment_info(settings: Settings) -> Dict[str, Any]:
    """What ran where: versions, device, threads, allocator settings, load average."""
    import janus_kernels as jk
    info: Dict[str, Any] = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "mode": settings.mode,
        "device": settings.device,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "janus_kernels": jk.__version__,
        "extension": jk._ext.build_info(),
        "git_commit": _git_commit(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "threads": settings.threads,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "isa": runtime_info(),
        "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE"),
        "loadavg_start": _loadavg(),
        "argv": sys.argv[1:],
    }
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if settings.is_cuda:
        p = torch.cuda.get_device_properties(torch.device(settings.device))
        info["gpu"] = p.name
        info["gpu_memory_gb"] = round(p.total_memory / 1024 ** 3, 1)
        info["cuda"] = torch.version.cuda
    return info


# ====================================================================== result holders
@dataclasses.dataclass
class SuiteResult:
    """One suite's output: measurement rows (dicts), free-form notes, and skipped items
    (each a line saying what was skipped and why)."""

    name: str
    rows: List[Dict[str, Any]] = dataclasses.field(default_factory=list)
    notes: List[str] = dataclasses.field(default_factory=list)
    skipped: List[str] = dataclasses.field(default_factory=list)
    extra: Dict[str, Any] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0

    def skip(self, what: str, why: str) -> None:
        line = f"{what}: {why}"
        if line not in self.skipped:
            self.skipped.append(line)

    def as_dict(self) -> Dict[str, Any]:
        return {"rows": self.rows, "notes": self.notes, "skipped": self.skipped,
                "extra": self.extra, "seconds": self.seconds}


def optional_import(name: str) -> Tuple[Optional[Any], Optional[str]]:
    """(module, None), or (None, reason) when it cannot be imported: the suites that depend
    on modules other helpers are still writing (losses, janus_model) skip cleanly."""
    try:
        return importlib.import_module(name), None
    except Exception as e:  # ImportError, or an error raised while importing
        return None, f"{type(e).__name__}: {e}"


def progress_cell(r: Dict[str, Any], name_key: str = "contender", digits: int = 2) -> str:
    """One row's part of a progress line: its time, or why it has none (a failure with its
    message, never a bare "failed")."""
    name = r.get(name_key)
    if r.get("status") == "ok":
        return f"{name} {r['ms']:.{digits}f} ms" + (" (1 call, time-boxed)"
                                                    if r.get("timeboxed") else "")
    if r.get("status") == "failed":
        return f"{name} {r.get('note') or 'failed (no message)'}"
    if r.get("predicted_s"):
        return f"{name} skipped (~{fmt_num(r['predicted_s'])} s/call predicted)"
    return f"{name} skipped"


def error_line(e: BaseException, limit: int = 160) -> str:
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg[:limit]}{'...' if len(msg) > limit else ''}"


# ============================================================================= writers
def _jsonable(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, torch.dtype):
        return dtype_name(x)
    return x


def write_json(path: str, data: Dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(_jsonable(data), f, indent=1)
        f.write("\n")


def fmt_num(x: Any, digits: int = 3) -> str:
    """Compact numbers for tables: 3 significant digits, '—' for missing."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    if isinstance(x, int):
        return str(x)
    if x == 0:
        return "0"
    mag = math.floor(math.log10(abs(x)))
    if mag >= digits - 1:
        return f"{x:.0f}"
    return f"{x:.{max(digits - 1 - mag, 0)}f}"


def markdown_table(rows: Sequence[Dict[str, Any]], columns: Sequence[Tuple[str, str]],
                   formats: Optional[Dict[str, Callable[[Any], str]]] = None) -> str:
    """A GitHub Markdown table. ``columns`` = [(key, header)]; numbers via ``fmt_num``
    unless ``formats[key]`` is given."""
    formats = formats or {}
    head = "| " + " | ".join(h for _, h in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    lines = [head, sep]
    for r in rows:
        cells = [formats.get(k, fmt_num)(r.get(k)) for k, _ in columns]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def bar_chart(path: str, title: str, groups: Sequence[str], series: Dict[str, Sequence[Any]],
              ylabel: str, log: bool = False, hline: Optional[Tuple[float, str]] = None
              ) -> Optional[str]:
    """Grouped bar chart (matplotlib, Agg backend). ``series`` maps a legend label to one
    value per group (None = no bar). Returns None when written, else why not."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        return f"matplotlib not available ({e})"
    n, k = len(groups), max(len(series), 1)
    width = 0.8 / k
    fig, ax = plt.subplots(figsize=(min(max(6.0, 0.4 * n * max(k, 2) + 2), 16.0), 4.2))
    for si, (label, vals) in enumerate(series.items()):
        xs = [gi + (si - (k - 1) / 2) * width for gi in range(n)]
        ys = [float(v) if v is not None else float("nan") for v in vals]
        ax.bar(xs, ys, width=width, label=label)
    if hline is not None:
        ax.axhline(hline[0], color="black", linestyle="--", linewidth=1)
        ax.text(n - 0.5, hline[0], hline[1], ha="right", va="bottom", fontsize=8)
    ax.set_xticks(range(n))
    ax.set_xticklabels(groups, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if log:
        ax.set_yscale("log")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def table_main(argv: Optional[Sequence[str]], prog: str, doc: Optional[str],
               run: Callable[[Settings, str], Dict[str, Any]],
               columns: Sequence[Tuple[str, str]], formats: Dict[str, Callable],
               setup: Optional[Callable[[], None]] = None) -> int:
    """The command line of a one-table benchmark (``python -m benchmarks.<name>``):
    ``--quick`` (tiny shape, quick timing), ``--timing``, ``--threads``, ``--json``; prints
    the notes and the table of ``run(settings, "quick" | "standard")``; exit status 1 when a
    row failed (has a ``note``). ``setup`` runs once after the thread settings."""
    ap = argparse.ArgumentParser(prog=prog, description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny shape, quick timing (smoke)")
    ap.add_argument("--timing", default="standard", choices=("quick", "standard", "full"))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None, help="also write the result as JSON here")
    args = ap.parse_args(argv)
    settings = Settings.for_mode("quick" if args.quick else args.timing, threads=args.threads,
                                 call_budget_s=0.0)
    settings.apply()
    if setup is not None:
        setup()
    res = run(settings, "quick" if args.quick else "standard")
    print("\n".join(f"* {n}" for n in res["notes"]))
    print(markdown_table(res["rows"], columns, formats))
    if args.json:
        write_json(args.json, res)
    return 1 if any("note" in r for r in res["rows"]) else 0
