"""The machine's own ceilings, measured at the start of every run in the same process and
thread setting as the benchmarks (so a loaded machine shows up in both). Keys end in their unit.

Compute peak (the rate the floors and "% of peak" use): the LARGEST rate any of these reaches,
so that work / peak is a true floor on every CPU. torch.matmul alone is no ceiling: on a Zen 2
MKL's AMD path ran fp32 at 85.6 GFLOP/s while our attention kernel did 100 useful GFLOP/s.

    torch.mm             fp32 / bf16 square GEMM (n = 2048; smaller where one call would be slow)
    torch.bmm tiles      batched 64x64 @ 64x512 and 64x512 @ 512x64 products (attention tiles)
    brgemm tile          the brgemm our attention kernels are built from, at the ISA level in
                         use (op ``brgemm_tile_gflops`` of that level; bf16 only at level amx)
    FMA loop             register-only fp32 FMA chains on all threads at that level (op
                         ``fma_peak_gflops``): the vector units' own peak
    bf16 also counts the fp32 peak: a bf16 kernel can always widen its tiles to fp32 (what our
    avx2 / avx512 levels do), so the fp32 rate is a rate a bf16 kernel reaches.

A candidate that cannot be measured (an older build without the ops, a CUDA device, no bf16
brgemm at this level) is recorded as None with the reason in ``machine["na"]``.
Memory: copy of 256 MB (read + write counted), read (sum); exp throughput (torch.exp).
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from .common import MB, Settings, dtype_name, time_fn, time_once

__all__ = ["machine_peaks", "isa_level_peaks", "select_peak", "compute_peak", "TILES"]

#: (name, (M, N, K)) of the brgemm tiles: QK^T (64 q rows x 512 keys, d = 64) and PV
TILES: Tuple[Tuple[str, Tuple[int, int, int]], ...] = (("qk", (64, 512, 64)),
                                                       ("pv", (64, 64, 512)))


def _rate(fn: Callable[[], Any], work: float, settings: Settings, repeats: int = 5
          ) -> Tuple[float, Optional[float]]:
    """work / median seconds, and the CPU utilisation of those calls."""
    t = time_fn(fn, settings, warmup=1, repeats=repeats, budget_s=1.5)
    return work / (t.ms / 1e3), t.cpu_util


def _fit_size(make: Callable[[int], Callable[[], Any]], work: Callable[[int], float], size: int,
              probe: int, device: str, target_s: float) -> int:
    """The largest of size, size/2, ... (not below ``probe``) whose call is predicted, from one
    call at ``probe``, to take at most ``target_s``: a GEMM without a fast path for a dtype
    (bf16 under an AVX2 cap) must not cost seconds per call here."""
    fn = make(probe)
    time_once(fn, device)                      # the first call pays one-time setup
    rate = work(probe) / max(time_once(fn, device), 1e-9)
    while size > probe and work(size) / rate > target_s:
        size //= 2
    return max(size, probe)


def _calibrated(op: Callable[[int], float], probe_iters: int, max_iters: int,
                target_s: float, tries: int = 3) -> float:
    """The best GFLOP/s of ``tries`` calls of ``op(iters)``, with iters chosen from one probe
    call so each call takes about ``target_s``."""
    t0 = time.perf_counter()
    op(probe_iters)
    secs = time.perf_counter() - t0
    iters = int(min(max(probe_iters * target_s / max(secs, 1e-6), probe_iters), max_iters))
    return max(float(op(iters)) for _ in range(tries))


def _level_ops() -> Tuple[Optional[str], Any, Optional[str]]:
    """(ISA level in use, its op namespace, None) or (level, None, why not)."""
    try:
        from janus_kernels import cpu_isa
    except ImportError as e:
        return None, None, f"janus_kernels.cpu_isa is not in this build ({e})"
    try:
        level = cpu_isa.active_level()
        if level is None:
            return None, None, cpu_isa.unavailable_reason() or "no compiled CPU level"
        return level, cpu_isa.level_ops(level), None
    except Exception as e:  # noqa: BLE001 - a bad JANUS_CPU_ISA: recorded, the run goes on
        return None, None, f"{type(e).__name__}: {e}"


def isa_level_peaks(settings: Settings, level: Optional[str], ops: Any, why: Optional[str]
                    ) -> Tuple[Dict[str, Optional[float]], Dict[str, str]]:
    """The FMA-loop and brgemm-tile rates at ``level`` from its op namespace ``ops``:
    (values, reasons for the ones that are None)."""
    keys = ["fma_fp32_gflops"] + [f"brgemm_{t}_{dt}_gflops" for dt in ("fp32", "bf16")
                                  for t, _ in TILES]
    vals: Dict[str, Optional[float]] = {k: None for k in keys}
    na: Dict[str, str] = {}
    if settings.is_cuda:
        return vals, {k: "CPU only" for k in keys}
    if ops is None:
        return vals, {k: why or "no compiled CPU level" for k in keys}
    target = 0.05 if settings.mode == "quick" else 0.2

    def measure(key: str, fn: Callable[[], float]) -> None:
        try:
            vals[key] = fn()
        except (AttributeError, RuntimeError) as e:   # op missing in this build / refused
            msg = " ".join(str(e).split())
            na[key] = f"{type(e).__name__}: {msg[:140]}"

    fma = getattr(ops, "fma_peak_gflops", None)
    measure("fma_fp32_gflops", lambda: _calibrated(
        lambda n: _need(fma, "fma_peak_gflops", level)(n), 20_000, 1 << 36, target))
    tile = getattr(ops, "brgemm_tile_gflops", None)
    for dt in ("fp32", "bf16"):
        for name, (m, n, k) in TILES:
            key = f"brgemm_{name}_{dt}_gflops"
            if dt == "bf16" and level != "amx":
                na[key] = f"level {level} widens bf16 tiles to fp32 (no bf16 brgemm)"
                continue
            measure(key, lambda m=m, n=n, k=k, bf=dt == "bf16": _calibrated(
                lambda it: _need(tile, "brgemm_tile_gflops", level)(m, n, k, bf, it),
                8, 1 << 24, target))
    return vals, na


def _need(op: Optional[Callable], name: str, level: Optional[str]) -> Callable:
    if op is None:
        raise AttributeError(f"op janus_{level}::{name} is not in this build")
    return op


def select_peak(candidates: Dict[str, Optional[float]]) -> Tuple[Optional[float], Optional[str]]:
    """(largest finite positive rate, its name), (None, None) when there is none."""
    best: Tuple[Optional[float], Optional[str]] = (None, None)
    for name, v in candidates.items():
        if v is not None and math.isfinite(v) and v > 0 and (best[0] is None or v > best[0]):
            best = (float(v), name)
    return best


def _best(*vals: Optional[float]) -> Optional[float]:
    return select_peak({str(i): v for i, v in enumerate(vals)})[0]


def peak_candidates(out: Dict[str, Any]) -> Dict[str, Dict[str, Optional[float]]]:
    """The named candidates of each dtype's compute peak, from the measured values."""
    level = out.get("isa_level") or "?"
    fp32 = {
        "torch.mm": out.get("gemm_fp32_gflops"),
        "torch.bmm tiles": _best(out.get("tile_qk_fp32_gflops"), out.get("tile_pv_fp32_gflops")),
        f"brgemm tile ({level})": _best(out.get("brgemm_qk_fp32_gflops"),
                                        out.get("brgemm_pv_fp32_gflops")),
        f"FMA loop ({level})": out.get("fma_fp32_gflops"),
    }
    fp32_peak, fp32_src = select_peak(fp32)
    bf16 = {
        "torch.mm": out.get("gemm_bf16_gflops"),
        "torch.bmm tiles": _best(out.get("tile_qk_bf16_gflops"), out.get("tile_pv_bf16_gflops")),
        f"brgemm tile ({level})": _best(out.get("brgemm_qk_bf16_gflops"),
                                        out.get("brgemm_pv_bf16_gflops")),
        f"fp32 peak, widened ({fp32_src})": fp32_peak,
    }
    return {"fp32": fp32, "bf16": bf16}


def machine_peaks(settings: Settings) -> Dict[str, Any]:
    """Measure this machine's ceilings now (see the module docstring)."""
    dev = settings.device
    quick = settings.mode == "quick"
    cuda = settings.is_cuda
    out: Dict[str, Any] = {}
    utils: List[float] = []

    def rec(key: str, val: Tuple[float, Optional[float]], scale: float) -> None:
        out[key] = val[0] / scale
        if val[1] is not None:
            utils.append(val[1])

    n_max = 4096 if cuda else (1024 if quick else 2048)
    target = 0.1 if quick else 0.4
    for dt in (torch.float32, torch.bfloat16):
        def gemm(n: int, dt=dt) -> Callable[[], Any]:
            a, b = (torch.randn(n, n, device=dev).to(dt) for _ in range(2))
            c = torch.empty(n, n, device=dev, dtype=dt)
            return lambda: torch.mm(a, b, out=c)

        def gemm_work(n: int) -> float:
            return 2.0 * n ** 3
        n = _fit_size(gemm, gemm_work, n_max, 256, dev, target)
        rec(f"gemm_{dtype_name(dt)}_gflops", _rate(gemm(n), gemm_work(n), settings), 1e9)
        out[f"gemm_{dtype_name(dt)}_n"] = n
        # the two attention tile shapes as batched products, the call overhead amortized
        for name, (m, nn, k) in TILES:
            def tiles(nb: int, m=m, nn=nn, k=k, dt=dt) -> Callable[[], Any]:
                x = torch.randn(nb, m, k, device=dev).to(dt)
                y = torch.randn(nb, k, nn, device=dev).to(dt)
                z = torch.empty(nb, m, nn, device=dev, dtype=dt)
                return lambda: torch.bmm(x, y, out=z)

            def tile_work(nb: int, m=m, nn=nn, k=k) -> float:
                return 2.0 * nb * m * k * nn
            nb = _fit_size(tiles, tile_work, 64 if quick else 256, 4, dev, target)
            rec(f"tile_{name}_{dtype_name(dt)}_gflops", _rate(tiles(nb), tile_work(nb), settings),
                1e9)
    level, ops, why = _level_ops()
    out["isa_level"] = level
    vals, na = isa_level_peaks(settings, level, ops, why)
    out.update(vals)
    out["na"] = na
    cands = peak_candidates(out)
    out["peak_candidates"] = cands
    for dt in ("fp32", "bf16"):
        out[f"peak_{dt}_gflops"], out[f"peak_{dt}_source"] = select_peak(cands[dt])
    ne = (4 if quick else 16) * MB
    x = torch.randn(ne, device=dev)
    y = torch.empty_like(x)
    rec("exp_gelem_s", _rate(lambda: torch.exp(x, out=y), float(ne), settings), 1e9)
    nbytes = (64 if quick else 256) * MB * (4 if cuda else 1)
    src = torch.empty(nbytes // 4, device=dev).fill_(1.0)
    dst = torch.empty_like(src).fill_(0.0)               # touched: no page faults timed
    rec("copy_gb_s", _rate(lambda: dst.copy_(src), 2.0 * nbytes, settings), 1e9)
    rec("read_gb_s", _rate(lambda: src.sum(), float(nbytes), settings), 1e9)
    out["gemm_n"] = out["gemm_fp32_n"]
    out["copy_mb"] = nbytes / MB
    out["cpu_util"] = (sum(utils) / len(utils)) if utils else None
    return out


def compute_peak(machine: Dict[str, Any], dtype: torch.dtype) -> Optional[float]:
    """The compute peak (GFLOP/s) the floors of ``dtype`` use: fp32 / fp64 the fp32 peak,
    bf16 / fp16 the bf16 one. Results written before the peak selection existed fall back to
    their torch.mm rate."""
    dt = "fp32" if dtype in (torch.float32, torch.float64) else "bf16"
    return machine.get(f"peak_{dt}_gflops") or machine.get(f"gemm_{dt}_gflops")
