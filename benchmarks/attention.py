"""Attention benchmark: ``janus_kernels.attention`` (every backend that runs on the device)
against the dense baselines, for the JANUS masks and the generic mask families.

Cases. Per sample, N is uniform in [Nmax/2, Nmax], M = int(0.55 N), U = N + 2 - M; H = 8,
d = 64; q/k/v are padded to the batch maxima as a real batch is.

    janus_nar       JANUS NAR/AUX pass: rows [content (Lc = max U+2M) ; query (Lq = max M)]
    janus_ar        JANUS AR pass: rows [content ; query], both causal over T = N+1 keys
    causal_pad      causal with per-sample lengths N (padding rows output 0)
    prefix_lm       prefix-LM, prefix = N // 2
    sliding_window  causal sliding window of max(16, Nmax // 4) keys
    permutation     XLNet-style two-stream permutation mask, one random order per sample

Contenders (one row each per case, dtype and pass):

    ours:<backend>  janus_kernels.attention(q, k, v, descriptor, backend=...): the mask is
                    generated inside the kernel from a few ints per sample
    eager_dense     the authors' eager path: the dense mask is built on every call (JANUS
                    NAR: the authors' per-sample Python loop ``authors_janus_masks``; JANUS
                    AR: a causal x key-padding mask; others: ``descriptor.materialize()``),
                    build time INCLUDED, then ``reference_attention(upcast=False)``
                    (bmm + masked_fill + softmax + bmm in the input precision)
    sdpa_dense      F.scaled_dot_product_attention with the dense (B, 1, Lq, Lk) bool mask
                    from ``materialize()``; the build time is reported (mask_ms), not included
    flex_compiled   torch.compile(flex_attention) with a mask_mod that evaluates the same
                    predicate from the descriptor's per-sample tensors, plus
                    create_block_mask (reported as mask_ms, not included; compile time as
                    compile_s). Forward only on CPU, where its backward is refused.

Reported per row: time (median, min, max, spread, CPU utilisation), peak memory of one call,
useful GFLOP/s = 4·H·d·(visible score entries) per forward (backward = 2.5x forward, so
fwd+bwd = 3.5x) over the time, that rate as a percentage of the compute peak measured in
the same run (benchmarks/peaks.py), the slowdown of each baseline relative to ours
(``vs_ours`` = its time / ours), and the largest difference from ours on rows that see a key
(a sanity check of the baseline). Baselines that take seconds per call are time-boxed
(benchmarks/timebox.py).
"""
from __future__ import annotations

import dataclasses
import gc
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

import janus_kernels as jk
from janus_kernels.masks import Field, Kind, MaskDescriptor
from janus_kernels.reference import (authors_janus_masks, authors_mask_to_allowed,
                                     reference_attention, sdpa_attention)

from .common import (Settings, SuiteResult, case_generator, dtype_name, error_line,
                     first_call, progress_cell, settle_first_call, time_fn, time_once,
                     time_rows)
from .peaks import compute_peak
from .timebox import CallBudget

__all__ = ["Shape", "SHAPES", "FAMILIES", "Case", "make_case", "case_inputs", "plan", "run",
           "flex_mask_mod"]

H, HEAD_DIM = 8, 64
FAMILIES = ("janus_nar", "janus_ar", "causal_pad", "prefix_lm", "sliding_window", "permutation")
JANUS_FAMILIES = ("janus_nar", "janus_ar")
PASSES = ("fwd", "fwd+bwd")
BWD_FLOP_FACTOR = 2.5               # FlashAttention's convention: bwd = 2.5x fwd


@dataclasses.dataclass(frozen=True)
class Shape:
    name: str
    B: int
    Nmax: int


SHAPES = {s.name: s for s in (
    Shape("tiny", 2, 16),
    Shape("small", 8, 48),
    Shape("iwslt", 64, 30),
    Shape("medium", 16, 256),
    Shape("long512", 8, 512),
    Shape("long1024", 8, 1024),
    Shape("long2048", 8, 2048),
)}


def plan(settings: Settings) -> List[Tuple[str, str, torch.dtype, bool]]:
    """(family, shape name, dtype, run flex) for the mode. Standard: the JANUS NAR/AUX pass on
    the three main shapes, the AR pass on iwslt and long512, the generic families on the medium
    shape, flex in fp32 (sized for 10 minutes on 2 cores; see benchmarks/__main__.py); full:
    every family on every shape up to 2048, flex in both dtypes; quick: tiny shapes. A
    --shapes filter naming shapes runs every family on exactly those."""
    dts = (torch.float32, torch.bfloat16)
    if settings.shapes:
        bad = [s for s in settings.shapes if s not in SHAPES]
        if bad:
            raise ValueError(f"shapes: unknown {bad}; choose from {list(SHAPES)}")
        return [(f, s, dt, dt == torch.float32 or settings.mode == "full")
                for s in settings.shapes for f in FAMILIES for dt in dts]
    if settings.mode == "quick":
        return [(f, s, dt, dt == torch.float32)
                for s in ("tiny", "small") for f in FAMILIES for dt in dts
                if s == "tiny" or f in JANUS_FAMILIES]
    if settings.mode == "standard":
        out = [(f, s, dt, dt == torch.float32)
               for s in ("iwslt", "medium", "long512") for f in JANUS_FAMILIES for dt in dts
               if not (f == "janus_ar" and s == "medium")]
        out += [(f, "medium", dt, dt == torch.float32)
                for f in FAMILIES if f not in JANUS_FAMILIES for dt in dts]
        return out
    return [(f, s, dt, True) for s in ("iwslt", "medium", "long512", "long1024", "long2048")
            for f in FAMILIES for dt in dts]


# ================================================================================ cases
@dataclasses.dataclass
class Case:
    """One mask instance: the descriptor, how the dense baseline builds its mask, and the
    numbers the FLOP count needs."""

    family: str
    shape: Shape
    desc: MaskDescriptor
    dense_builder: Callable[[], torch.Tensor]     # -> bool (B, Lq, Lk), built per call
    builder_name: str
    visible: int                                  # allowed entries, summed over the batch
    real_rows: torch.Tensor                       # (B, Lq) bool: rows that see a key
    allowed: torch.Tensor                         # materialize(): the SDPA baseline's mask
    materialize_ms: float                         # what building it took
    cache: Dict[str, Any] = dataclasses.field(default_factory=dict)  # per-case, any dtype

    @property
    def label(self) -> str:
        return f"{self.family}/{self.shape.name}"


def _ar_dense(T: torch.Tensor, Tmax: int, device) -> Callable[[], torch.Tensor]:
    """The authors' AR masks: a causal (T, T) mask and key padding, for the content and the
    query rows (two streams, same mask)."""
    def build() -> torch.Tensor:
        tri = torch.ones(Tmax, Tmax, dtype=torch.bool, device=device).tril()
        kp = torch.arange(Tmax, device=device)[None, :] < T[:, None]
        c = tri[None] & kp[:, None, :]
        return torch.cat([c, c], 1)
    return build


def make_case(family: str, shape: Shape, gen: torch.Generator, device: str) -> Case:
    """Draw per-sample lengths for ``shape`` and build ``family``'s descriptor on device."""
    B, Nmax = shape.B, shape.Nmax
    N = torch.randint(max(Nmax // 2, 1), Nmax + 1, (B,), generator=gen)
    M = (0.55 * N.double()).long()
    U = N + 2 - M
    builder_name = "materialize()"
    if family == "janus_nar":
        desc = jk.janus_nar_mask(U, M, device=device)
        Lc, Lq = desc.q_split, desc.q_len - desc.q_split
        Ud, Md = U.to(device), M.to(device)

        def builder() -> torch.Tensor:
            return authors_mask_to_allowed(*authors_janus_masks(Ud, Md, Lc, Lq))
        builder_name = "authors' per-sample loop"
    elif family == "janus_ar":
        desc = jk.janus_ar_mask(N + 1, device=device)
        builder = _ar_dense((N + 1).to(device), desc.kv_len, device)
        builder_name = "causal x key padding"
    else:
        if family == "causal_pad":
            desc = jk.causal_mask(N, device=device)
        elif family == "prefix_lm":
            desc = jk.prefix_lm_mask(N // 2, N, device=device)
        elif family == "sliding_window":
            desc = jk.sliding_window_mask(N, max(16, Nmax // 4), device=device)
        elif family == "permutation":
            # one random factorization order per sample over its N real positions;
            # padding positions keep rank = position (they are masked by the length)
            L = int(N.max())
            rank = torch.arange(L).repeat(B, 1)
            for b in range(B):
                rank[b, :int(N[b])] = torch.randperm(int(N[b]), generator=gen)
            desc = jk.permutation_mask(rank.to(device), N.to(device))
        else:
            raise ValueError(f"family: expected one of {FAMILIES}, got {family!r}")
        builder = desc.materialize
    allowed = desc.materialize()
    mat_s = min(time_once(desc.materialize, device) for _ in range(2))   # warm, best of 2
    return Case(family, shape, desc, builder, builder_name, int(allowed.sum()),
                allowed.any(-1), allowed, 1e3 * mat_s)


# ================================================================================= flex
def flex_mask_mod(desc: MaskDescriptor) -> Callable:
    """A FlexAttention mask_mod computing the descriptor's predicate from its per-sample
    tensors (params (B, NUM_FIELDS), the rank / document side table): the same integers our
    kernel reads."""
    p, qs, rank = desc.params, desc.q_split, desc.rank
    kvmax = max(desc.kv_len - 1, 0)
    perm = desc.kind == Kind.PERMUTATION
    docs = desc.kind == Kind.DOCUMENTS
    Lq = desc.q_len

    def mask_mod(b, h, q_idx, kv_idx):
        s1 = q_idx >= qs
        r = torch.where(s1, q_idx - qs, q_idx)
        rows = torch.where(s1, p[b, Field.ROWS1], p[b, Field.ROWS0])
        off = torch.where(s1, p[b, Field.OFF1], p[b, Field.OFF0])
        ok = (r < rows) & (kv_idx < p[b, Field.KV_LEN]) & (kv_idx >= p[b, Field.KEY_START])
        if docs:
            ok = ok & (rank[b, q_idx] == rank[b, Lq + kv_idx])
        if perm:
            return ok & (rank[b, kv_idx] + off <= rank[b, torch.clamp(r, max=kvmax)])
        hmin = torch.where(s1, p[b, Field.HMIN1], p[b, Field.HMIN0])
        width = torch.where(s1, p[b, Field.WIDTH1], p[b, Field.WIDTH0])
        hi = torch.maximum(r + off, hmin)
        return ok & ((kv_idx < p[b, Field.PREFIX]) | ((hi - width <= kv_idx) & (kv_idx < hi)))
    return mask_mod


_FLEX: Dict[str, Any] = {}


def _flex_compiled():
    """torch.compile(flex_attention), created once; every new shape recompiles (dynamic
    shapes fail on CPU), so the recompile limit is raised above the number of cases."""
    if "fn" not in _FLEX:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        import torch._dynamo.config as dcfg
        for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                     "accumulated_cache_size_limit"):
            if hasattr(dcfg, name):
                setattr(dcfg, name, max(getattr(dcfg, name), 512))
        _FLEX["fn"] = torch.compile(flex_attention, dynamic=False)
        _FLEX["block_mask"] = create_block_mask
    return _FLEX["fn"], _FLEX["block_mask"]


# ============================================================================ contenders
@dataclasses.dataclass
class Contender:
    name: str
    run: Optional[Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]]
    passes: Tuple[str, ...] = PASSES
    mask_ms: Optional[float] = None        # dense mask / block mask build time
    mask_included: bool = False
    compile_s: Optional[float] = None
    skip_reason: Optional[str] = None      # the whole contender
    pass_skip: Dict[str, str] = dataclasses.field(default_factory=dict)


def our_backends(device: str) -> Dict[str, Optional[str]]:
    """Backend -> None if it runs here, else why not. The dense 'reference' backend is the
    eager baseline already; Triton on CPU is only the interpreter (a test tool, not a
    benchmark); the compiled CPU and CUDA kernels are listed on their own device only."""
    out: Dict[str, Optional[str]] = {}
    other_device = {"cpu": "cuda", "cuda": "cpu"}.get(torch.device(device).type)
    for name, ok in jk.available_backends(device).items():
        if name == "reference" or name == other_device:
            continue
        if name == "triton" and torch.device(device).type != "cuda":
            out[name] = "runs only interpreted on CPU (TRITON_INTERPRET=1): not benchmarked"
            continue
        out[name] = None if ok == "yes" else ok
    return out


def _dense_bytes(case: Case, dtype: torch.dtype, contender: str, pass_: str) -> float:
    """Rough peak bytes of a dense baseline: score-sized (B, H, Lq, Lk) tensors plus the
    masks (the authors' float32 masks, bool copies)."""
    B, d = case.shape.B, case.desc
    S = B * H * d.q_len * d.kv_len
    masks = B * d.q_len * d.kv_len * (9 if contender == "eager_dense" else 5)
    if contender == "eager_dense":
        el = torch.finfo(dtype).bits // 8
        return S * el * (4 if pass_ == "fwd" else 8) + masks
    return masks + (S * 4 if pass_ != "fwd" else 0)


def _contenders(case: Case, dtype: torch.dtype, settings: Settings, with_flex: bool,
                result: SuiteResult) -> List[Contender]:
    desc, dev = case.desc, settings.device
    cs: List[Contender] = []
    for be, why in our_backends(dev).items():
        if why is not None:
            result.skip(f"ours:{be}", why)
            continue
        cs.append(Contender(f"ours:{be}",
                            lambda q, k, v, be=be: jk.attention(q, k, v, desc, backend=be)))
    # eager dense: the mask build is part of every call
    if "dense_build_ms" not in case.cache:
        case.cache["dense_build_ms"] = time_fn(case.dense_builder, settings, warmup=1,
                                               repeats=3).ms
    cs.append(Contender("eager_dense",
                        lambda q, k, v: reference_attention(q, k, v, case.dense_builder(),
                                                            upcast=False),
                        mask_ms=case.cache["dense_build_ms"], mask_included=True))
    allowed = case.allowed
    cs.append(Contender("sdpa_dense", lambda q, k, v: sdpa_attention(q, k, v, allowed),
                        mask_ms=case.materialize_ms))
    cs.append(_flex_contender(case, settings, with_flex))
    return cs


def _flex_contender(case: Case, settings: Settings, with_flex: bool) -> Contender:
    c = Contender("flex_compiled", None)
    if not settings.flex:
        c.skip_reason = ("not run in --quick (a cold torch.compile costs ~30 s here); "
                         "run without --quick or pass --flex")
        return c
    if not with_flex:
        c.skip_reason = "bf16 flex only in --full (one compile per shape and dtype)"
        return c
    try:
        fn, create_block_mask = _flex_compiled()
        desc = case.desc
        if "block_mask" not in case.cache:       # the same for every dtype
            t0 = time.perf_counter()
            case.cache["block_mask"] = create_block_mask(
                flex_mask_mod(desc), desc.batch_size, None, desc.q_len, desc.kv_len,
                device=settings.device)
            case.cache["block_mask_ms"] = 1e3 * (time.perf_counter() - t0)
        bm = case.cache["block_mask"]
        c.mask_ms = case.cache["block_mask_ms"]
        c.run = lambda q, k, v: fn(q, k, v, block_mask=bm)
    except Exception as e:  # noqa: BLE001 - report any failure as a row, keep going
        c.skip_reason = f"failed: {error_line(e)}"
    if not settings.is_cuda:
        c.passes = ("fwd",)
        c.pass_skip["fwd+bwd"] = "FlexAttention refuses backward on CPU (NotImplementedError)"
    return c


# ============================================================================= measuring
def case_inputs(case: Case, dtype: torch.dtype, gen: torch.Generator, device: str):
    """q, k, v and the upstream gradient of `case` (B, H heads, HEAD_DIM), drawn from gen."""
    B, d = case.shape.B, case.desc
    q = torch.randn(B, H, d.q_len, HEAD_DIM, generator=gen).to(device, dtype)
    k = torch.randn(B, H, d.kv_len, HEAD_DIM, generator=gen).to(device, dtype)
    v = torch.randn(B, H, d.kv_len, HEAD_DIM, generator=gen).to(device, dtype)
    # upstream gradient only on rows that see a key, so the dense baselines' padding rows
    # (which the authors open to every key) add nothing to dK/dV and grads are comparable
    dout = torch.randn(B, H, d.q_len, HEAD_DIM, generator=gen).to(device, dtype)
    dout = dout * case.real_rows[:, None, :, None].to(device, dtype)
    return q, k, v, dout


def _max_diff(a, b, real_rows: torch.Tensor) -> float:
    """Largest |a - b| over rows that see a key (tensors (B, H, L, d) or tuples of them)."""
    if isinstance(a, (tuple, list)):
        return max(_max_diff(x, y, None) for x, y in zip(a, b))
    diff = (a.float() - b.float()).abs()
    if real_rows is not None:
        diff = diff * real_rows[:, None, :, None].to(diff.device, diff.dtype)
    return float(diff.max()) if diff.numel() else 0.0


def _dense_work(case: Case, pass_: str) -> float:
    """Work units of a dense baseline's call, for the time-box predictions: score entries
    (B H Lq Lk), x 3.5 for fwd+bwd."""
    d = case.desc
    factor = 1.0 if pass_ == "fwd" else 1.0 + BWD_FLOP_FACTOR
    return case.shape.B * H * d.q_len * d.kv_len * factor


def _prepare(c: Contender, case: Case, dtype: torch.dtype, pass_: str, tensors,
             ours_out, ours_name: Optional[str], settings: Settings, budget: CallBudget
             ) -> Tuple[Dict[str, Any], Optional[Callable[[], Any]]]:
    """The row of one contender and the call to time (None when skipped, failed or
    time-boxed): the untimed first call (compile, first touch) gives the difference from ours
    and, where it does not compile, the peak memory. Baselines are time-boxed
    (benchmarks/timebox.py): not called when predicted far over the per-call budget, measured
    by their first call alone when that call was over it."""
    q, k, v, dout = tensors
    row: Dict[str, Any] = {
        "case": case.family, "shape": case.shape.name, "B": case.shape.B,
        "Nmax": case.shape.Nmax, "Lq": case.desc.q_len, "Lk": case.desc.kv_len,
        "dtype": dtype_name(dtype), "pass": pass_, "contender": c.name, "status": "ok",
        "mask_ms": c.mask_ms, "mask_included": c.mask_included,
        "mask_builder": case.builder_name if c.name == "eager_dense" else None,
        "density": case.visible / max(case.shape.B * case.desc.q_len * case.desc.kv_len, 1),
    }
    why = c.skip_reason or c.pass_skip.get(pass_)
    if why is None and c.name in ("eager_dense", "sdpa_dense"):
        need = _dense_bytes(case, dtype, c.name, pass_)
        if need > settings.mem_limit_gb * 1024 ** 3:
            why = (f"estimated {need / 1024 ** 3:.1f} GB > --mem-limit-gb "
                   f"{settings.mem_limit_gb:g}")
    compiles = c.name == "flex_compiled"
    baseline = not c.name.startswith("ours")
    kind, work = (c.name, row["dtype"], pass_), _dense_work(case, pass_)
    if why is None and baseline:
        why = budget.skip_compile() if compiles else budget.skip_before_call(kind, work)
        if why is not None:
            row["predicted_s"] = None if compiles else budget.predicted_s(kind, work)
    if why is not None:
        row.update(status="failed" if why.startswith("failed") else "skipped", note=why)
        return row, None
    if pass_ == "fwd":
        fn = lambda: c.run(q, k, v)          # noqa: E731
    else:
        qg, kg, vg = (t.detach().requires_grad_(True) for t in (q, k, v))
        fn = lambda: torch.autograd.grad(c.run(qg, kg, vg), (qg, kg, vg), dout)  # noqa: E731
    try:
        out, t_first, row["peak_mb"] = first_call(fn, settings.device,
                                                  not (compiles or settings.is_cuda))
        if compiles and pass_ == "fwd":
            row["compile_s"] = t_first
        if ours_out is not None and c.name != ours_name:
            row["max_diff"] = _max_diff(out, ours_out, case.real_rows if pass_ == "fwd" else None)
        del out
    except Exception as e:  # noqa: BLE001 - a failing contender is a row, not a crash
        row.update(status="failed", note=f"failed: {error_line(e)}")
        return row, None
    if settle_first_call(budget, row, compiles=compiles, baseline=baseline, kind=kind,
                         work=work, seconds=t_first, label=case.label):
        return row, None
    return row, fn


def _throughput(row: Dict[str, Any], case: Case, peak: Optional[float]) -> None:
    fwd = row["pass"] == "fwd"
    flops = 4.0 * H * HEAD_DIM * case.visible * (1.0 + (0.0 if fwd else BWD_FLOP_FACTOR))
    row["useful_gflop"] = flops / 1e9
    row["gflops"] = flops / (row["ms"] / 1e3) / 1e9
    if peak:
        row["pct_peak"] = 100.0 * row["gflops"] / peak


def _io_bytes(case: Case, dtype: torch.dtype, pass_: str) -> float:
    """Bytes any kernel must move for the op: read the q rows that see a key and the k/v
    rows below each sample's kv_len, write the whole output (padding rows are zeros) and the
    fp32 lse; the backward reads q, k, v, o, dO (the same rows) and lse and writes dq, dk, dv."""
    B, d = case.shape.B, case.desc
    el = torch.finfo(dtype).bits // 8
    q_rows = float(case.real_rows.sum())
    kv_rows = float(d.params[:, Field.KV_LEN].clamp(0, d.kv_len).sum())
    row = H * HEAD_DIM * el
    full_q, full_kv = B * d.q_len * row, B * d.kv_len * row
    lse = B * H * d.q_len * 4
    fwd = (q_rows + 2 * kv_rows) * row + full_q + lse
    if pass_ == "fwd":
        return fwd
    return fwd + (3 * q_rows + 2 * kv_rows) * row + lse + full_q + 2 * full_kv


def _floor(row: Dict[str, Any], case: Case, dtype: torch.dtype, machine: Dict[str, Any]) -> None:
    """A lower bound on any kernel's time for this op on this machine: the useful FLOPs at
    the measured compute peak, or the bytes it must move at the measured copy bandwidth,
    whichever is larger (they could at best overlap)."""
    peak, bw = compute_peak(machine, dtype), machine.get("copy_gb_s")
    if not peak or not bw:
        return
    row["compute_floor_ms"] = 1e3 * row["useful_gflop"] / peak
    row["memory_floor_ms"] = 1e3 * _io_bytes(case, dtype, row["pass"]) / (bw * 1e9)
    row["floor_ms"] = max(row["compute_floor_ms"], row["memory_floor_ms"])


def run(settings: Settings, machine: Dict[str, Any],
        log: Callable[[str], None] = print) -> SuiteResult:
    res = SuiteResult("attention")
    budget = settings.call_budget()
    t_suite = time.perf_counter()
    case: Optional[Case] = None          # the plan lists each case's dtypes together
    for family, shape_name, dtype, with_flex in plan(settings):
        if not settings.selected(family, shape_name, dtype_name(dtype)):
            continue
        if case is None or (case.family, case.shape.name) != (family, shape_name):
            case = None
            gc.collect()
            gen = case_generator(settings.seed, f"attention/{family}/{shape_name}")
            case = make_case(family, SHAPES[shape_name], gen, settings.device)
        tensors = case_inputs(case, dtype, case_generator(
            settings.seed, f"attention/{case.label}/{dtype_name(dtype)}"), settings.device)
        contenders = _contenders(case, dtype, settings, with_flex, res)
        ours = next((c for c in contenders if c.name.startswith("ours:")), None)
        for pass_ in PASSES:
            ours_out = None
            if ours is not None:
                q, k, v, dout = tensors
                try:
                    if pass_ == "fwd":
                        ours_out = ours.run(q, k, v)
                    else:
                        qg, kg, vg = (t.detach().requires_grad_(True) for t in (q, k, v))
                        ours_out = torch.autograd.grad(ours.run(qg, kg, vg), (qg, kg, vg), dout)
                except Exception:  # noqa: BLE001 - the row itself reports the failure
                    ours_out = None
            rows, fns = [], {}
            for c in contenders:
                row, fn = _prepare(c, case, dtype, pass_, tensors, ours_out,
                                   ours.name if ours else None, settings, budget)
                rows.append(row)
                if fn is not None:
                    fns[c.name] = fn
            time_rows({r["contender"]: r for r in rows}, fns, settings)
            del fns
            for r in rows:      # the timed medians predict the next cases better
                if r["status"] == "ok" and not r["contender"].startswith("ours"):
                    budget.record((r["contender"], r["dtype"], pass_), _dense_work(case, pass_),
                                  r["ms"] / 1e3, case.label)
            base = next((r for r in rows if r["contender"].startswith("ours:")
                         and r["status"] == "ok"), None)
            for r in rows:
                if r["status"] == "ok":
                    _throughput(r, case, compute_peak(machine, dtype))
                    _floor(r, case, dtype, machine)
                    if base is not None:
                        r["vs_ours"] = r["ms"] / base["ms"]
                    if r.get("floor_ms"):
                        # the speed-up over this contender that a kernel AT the floor would show
                        r["vs_floor"] = r["ms"] / r["floor_ms"]
            res.rows.extend(rows)
            del ours_out
            log("  " + _progress_line(case, dtype, pass_, rows))
        del tensors, contenders
    res.notes.append(
        "useful GFLOP/s counts only visible score entries: 4*H*d*sum(visible) per forward, "
        "backward = 2.5x forward; pct_peak is against the compute peak of the same dtype "
        "measured at the start of this run (the largest of torch.mm, the attention tiles, "
        "our brgemm tile and the FMA loop: see Machine peaks).")
    res.notes.append(
        "eager_dense includes its dense-mask build on every call (mask_ms shows that part); "
        "sdpa_dense and flex_compiled get their mask prebuilt (mask_ms, not included). "
        "eager_dense is janus_kernels.reference.reference_attention(upcast=False), which also "
        "computes the log-sum-exp (one extra pass over the scores).")
    res.notes.append(
        "floor ms = max(useful FLOPs / compute peak, bytes that must move / copy bandwidth), both "
        "measured at the start of this run; bytes = the q rows that see a key and the k/v rows "
        "below kv_len read, the whole output and lse written (backward: q, k, v, o, dO read "
        "again, dq, dk, dv written). No kernel can beat it (the memory part assumes the data "
        "streams from DRAM: true for these 20-200 MB working sets, not for tiny cached ones), "
        "so 'sdpa ms / floor ms' is the largest speed-up over SDPA this machine allows.")
    res.seconds = time.perf_counter() - t_suite
    return res


def _progress_line(case: Case, dtype: torch.dtype, pass_: str, rows: List[Dict[str, Any]]) -> str:
    return f"{case.label} {dtype_name(dtype)} {pass_}: " + ", ".join(map(progress_cell, rows))
