"""Results of the GPU check and their markdown report."""
from __future__ import annotations

import dataclasses
import platform
import time
from typing import List, Optional

import torch


@dataclasses.dataclass
class Result:
    phase: str
    name: str
    status: str            # "pass", "fail" or "skip"
    detail: str = ""
    seconds: float = 0.0


@dataclasses.dataclass
class Timing:
    shape: str
    impl: str
    fwd_ms: Optional[float]
    fwd_bwd_ms: Optional[float]
    note: str = ""


class Recorder:
    """Collects results and prints one progress line per result."""

    def __init__(self) -> None:
        self.results: List[Result] = []
        self.timings: List[Timing] = []
        self.t0 = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def add(self, result: Result) -> None:
        self.results.append(result)
        print(f"[{self.elapsed():6.1f}s] {result.status.upper():4s} {result.phase}: "
              f"{result.name} {result.detail}", flush=True)

    def add_timing(self, t: Timing) -> None:
        self.timings.append(t)
        f = "-" if t.fwd_ms is None else f"{t.fwd_ms:.3f}"
        fb = "-" if t.fwd_bwd_ms is None else f"{t.fwd_bwd_ms:.3f}"
        print(f"[{self.elapsed():6.1f}s] TIME {t.shape} {t.impl}: fwd {f} ms, fwd+bwd {fb} ms "
              f"{t.note}", flush=True)

    @property
    def failed(self) -> List[Result]:
        return [r for r in self.results if r.status == "fail"]


def device_name(device: str) -> str:
    if device == "cuda" and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        return (f"{p.name} (sm_{p.major}{p.minor}, {p.total_memory / 2**30:.0f} GiB, "
                f"{p.multi_processor_count} SMs)")
    return f"CPU only ({platform.processor() or platform.machine()}): dry run"


def _fmt(ms: Optional[float]) -> str:
    return "-" if ms is None else f"{ms:.3f}"


def markdown(rec: Recorder, device: str, dry: bool, build_info: str) -> str:
    import triton  # noqa: F401  (version in the header)
    lines = [f"# GPU check{' (dry run: CPU, tiny shapes)' if dry else ''}", "",
             f"- device: **{device_name(device)}**",
             f"- torch {torch.__version__} (CUDA {torch.version.cuda}), triton "
             f"{triton.__version__}, extension: {build_info}",
             f"- {len(rec.results)} checks: {sum(r.status == 'pass' for r in rec.results)} "
             f"passed, {len(rec.failed)} failed, "
             f"{sum(r.status == 'skip' for r in rec.results)} skipped; "
             f"{rec.elapsed():.0f} s (build excluded)", "",
             "## Checks", "", "| phase | check | result | detail | s |", "|---|---|---|---|---|"]
    for r in rec.results:
        detail = r.detail.replace("|", "/").replace("\n", " ")[:300]
        lines.append(f"| {r.phase} | {r.name} | {r.status} | {detail} | {r.seconds:.1f} |")
    lines += ["", "## Timings", ""]
    if dry:
        lines.append("Dry run: every implementation was called once; no timings on CPU.")
    lines += ["", "| shape | implementation | fwd ms | fwd+bwd ms | note |", "|---|---|---|---|---|"]
    for t in rec.timings:
        lines.append(f"| {t.shape} | {t.impl} | {_fmt(t.fwd_ms)} | {_fmt(t.fwd_bwd_ms)} | "
                     f"{t.note} |")
    return "\n".join(lines) + "\n"
