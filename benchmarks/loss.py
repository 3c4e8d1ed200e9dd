"""Loss benchmark: the fused JANUS losses (``janus_kernels.losses``) against eager PyTorch
and ``torch.compile`` of the same formulas, time and peak memory over rows x V.

Losses (released JANUS recipe, spec §6.1; eps = 0.1):

    symmetric_kl     KLs(x, y) = mean_r 1/2 [KL(p||q) + KL(q||p)],  p = softmax(x), q = softmax(y)
    cross_entropy    CE_eps(x, t) = mean_r (1-eps)(-log p_t) + eps mean_v(-log p_v)
    janus_loss       CE(AR) + 1 KLs(AR[kl], NAR) + 3 KLs(AR[kl], AUX) + 0.5 CE(NAR)
                     + 0.5 CE(AUX) + 1 KLs(NAR, AUX), from logits; N_ar = R AR rows and
                     M = R/2 masked rows
    fused_linear     the same criterion from hidden states (D) and a tied (V, D) projection:
                     ours never holds the (rows x V) logits; N_ar = R/2, M = R/4

Contenders: ``ours`` (janus_kernels.losses, default backend; for fused_linear also
``ours:linear+janus_loss``, the projection done by torch and only the loss fused), ``eager``
(log_softmax / F.cross_entropy formulas written here), ``compiled`` (torch.compile of the
eager formula; compile time reported as compile_s). Passes: fwd (inputs without grad) and
fwd+bwd (``torch.autograd.grad`` of the loss w.r.t. every float input: no .grad
accumulation). When ``janus_kernels.losses`` is missing its rows are skipped with a line
saying so, and the baselines still run.

At these sizes fresh (rows x V) outputs cost page faults (first touch), which all contenders
pay; THP_MEM_ALLOC_ENABLE=1 changes that balance (recorded in the run's metadata).
"""
from __future__ import annotations

import dataclasses
import gc
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from .common import (Settings, SuiteResult, case_generator, dtype_name, error_line,
                     first_call, optional_import, peak_memory_mb, progress_cell,
                     settle_first_call, time_interleaved, time_rows)
from .timebox import CallBudget

__all__ = ["eager_symmetric_kl", "eager_cross_entropy", "eager_janus_loss",
           "eager_fused_linear", "plan", "run"]

EPS = 0.1
W_RELEASED = dict(ar=1.0, nar=0.5, aux=0.5, kl_ar_nar=1.0, kl_ar_aux=3.0, kl_nar_aux=1.0)
LOSSES = ("symmetric_kl", "cross_entropy", "janus_loss", "fused_linear")
PASSES = ("fwd", "fwd+bwd")


# ======================================================================= eager formulas
def eager_symmetric_kl(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """mean_r 1/2 sum_v (p - q)(log p - log q), float32 softmaxes (the authors' way)."""
    lx, ly = F.log_softmax(x.float(), -1), F.log_softmax(y.float(), -1)
    return 0.5 * ((lx.exp() - ly.exp()) * (lx - ly)).sum(-1).mean()


def eager_cross_entropy(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(x.float(), t, label_smoothing=EPS)


def eager_janus_loss(ar: torch.Tensor, nar: torch.Tensor, aux: torch.Tensor,
                     ar_t: torch.Tensor, m_t: torch.Tensor, kl_rows: torch.Tensor
                     ) -> torch.Tensor:
    """The released JANUS criterion from logits (no length term)."""
    w = W_RELEASED
    ar_kl = ar.index_select(0, kl_rows)
    return (w["ar"] * eager_cross_entropy(ar, ar_t)
            + w["nar"] * eager_cross_entropy(nar, m_t)
            + w["aux"] * eager_cross_entropy(aux, m_t)
            + w["kl_ar_nar"] * eager_symmetric_kl(ar_kl, nar)
            + w["kl_ar_aux"] * eager_symmetric_kl(ar_kl, aux)
            + w["kl_nar_aux"] * eager_symmetric_kl(nar, aux))


def eager_fused_linear(h_ar, h_nar, h_aux, weight, ar_t, m_t, kl_rows) -> torch.Tensor:
    """Project every row (logits = h @ W^T) then the eager criterion."""
    return eager_janus_loss(h_ar @ weight.t(), h_nar @ weight.t(), h_aux @ weight.t(),
                            ar_t, m_t, kl_rows)


# ================================================================================ plan
@dataclasses.dataclass(frozen=True)
class LossCase:
    loss: str
    rows: int          # R (see the module docstring for how each loss uses it)
    vocab: int
    hidden: int = 0    # D, fused_linear only
    dtype: torch.dtype = torch.float32

    @property
    def label(self) -> str:
        d = f" D={self.hidden}" if self.hidden else ""
        return f"{self.loss} {self.rows}x{self.vocab}{d} {dtype_name(self.dtype)}"


def plan(settings: Settings) -> List[LossCase]:
    if settings.mode == "quick":
        R, V, D, fl_rows, dts = 64, 1000, 64, 64, (torch.float32,)
    elif settings.mode == "standard":
        R, V, D, fl_rows, dts = 1024, 32000, 512, 512, (torch.float32,)
    else:
        R, V, D, fl_rows, dts = 4096, 32000, 512, 2048, (torch.float32, torch.bfloat16)
    out = []
    for dt in dts:
        out += [LossCase("symmetric_kl", R, V, dtype=dt), LossCase("cross_entropy", R, V, dtype=dt),
                LossCase("janus_loss", R, V, dtype=dt),
                LossCase("fused_linear", fl_rows, V, D, dtype=dt)]
    return out


def _inputs(case: LossCase, gen: torch.Generator, device: str) -> Dict[str, Any]:
    """Logits with a realistic spread (std 2) and targets; janus rows: N_ar = R, M = R/2
    (fused_linear: N_ar = R/2, M = R/4 of the given R)."""
    R, V, dt = case.rows, case.vocab, case.dtype

    def logits(n: int) -> torch.Tensor:
        return (2.0 * torch.randn(n, V, generator=gen)).to(device, dt)

    def targets(n: int) -> torch.Tensor:
        return torch.randint(0, V, (n,), generator=gen).to(device)

    if case.loss == "symmetric_kl":
        return {"x": logits(R), "y": logits(R)}
    if case.loss == "cross_entropy":
        return {"x": logits(R), "t": targets(R)}
    n_ar, m = (R, R // 2) if case.loss == "janus_loss" else (R // 2, R // 4)
    kl_rows = torch.randperm(n_ar, generator=gen)[:m].sort().values.to(device)
    common = {"ar_t": targets(n_ar), "m_t": targets(m), "kl_rows": kl_rows}
    if case.loss == "janus_loss":
        return dict(ar=logits(n_ar), nar=logits(m), aux=logits(m), **common)
    D = case.hidden

    def hidden(n: int) -> torch.Tensor:
        return torch.randn(n, D, generator=gen).to(device, dt)
    w = (torch.randn(V, D, generator=gen) * D ** -0.5).to(device, dt)
    return dict(h_ar=hidden(n_ar), h_nar=hidden(m), h_aux=hidden(m), weight=w, **common)


def _float_keys(inp: Dict[str, Any]) -> List[str]:
    return [k for k, v in inp.items() if isinstance(v, torch.Tensor) and v.is_floating_point()]


# ========================================================================= contenders
def _ours(case: LossCase, losses) -> Dict[str, Callable[..., torch.Tensor]]:
    if case.loss == "symmetric_kl":
        return {"ours": lambda x, y: losses.symmetric_kl(x, y)}
    if case.loss == "cross_entropy":
        return {"ours": lambda x, t: losses.cross_entropy(x, t, label_smoothing=EPS)}
    if case.loss == "janus_loss":
        return {"ours": lambda ar, nar, aux, ar_t, m_t, kl_rows: losses.janus_loss(
            ar, nar, aux, ar_t, m_t, kl_rows, label_smoothing=EPS)[0]}
    return {
        "ours": lambda h_ar, h_nar, h_aux, weight, ar_t, m_t, kl_rows:
            losses.fused_linear_janus_loss(h_ar, h_nar, h_aux, weight, ar_t, m_t, kl_rows,
                                           label_smoothing=EPS)[0],
        "ours:linear+janus_loss": lambda h_ar, h_nar, h_aux, weight, ar_t, m_t, kl_rows:
            losses.janus_loss(h_ar @ weight.t(), h_nar @ weight.t(), h_aux @ weight.t(),
                              ar_t, m_t, kl_rows, label_smoothing=EPS)[0],
    }


_EAGER = {"symmetric_kl": eager_symmetric_kl, "cross_entropy": eager_cross_entropy,
          "janus_loss": eager_janus_loss, "fused_linear": eager_fused_linear}
_COMPILED: Dict[str, Callable] = {}


def _eager_bytes(case: LossCase) -> float:
    """Rough peak of the eager fwd+bwd: about 10 float32 (rows x V) tensors per input pair."""
    rows = {"symmetric_kl": 2 * case.rows, "cross_entropy": case.rows,
            "janus_loss": 2 * case.rows, "fused_linear": case.rows}[case.loss]
    return 5.0 * rows * case.vocab * 4


def _contenders(case: LossCase, settings: Settings, res: SuiteResult
                ) -> List[Tuple[str, Optional[Callable], Optional[str]]]:
    """(name, fn or None, skip reason)."""
    out: List[Tuple[str, Optional[Callable], Optional[str]]] = []
    losses, why = optional_import("janus_kernels.losses")
    if losses is None:
        res.skip("ours (janus_kernels.losses)", f"not available ({why})")
        names = ["ours"] + (["ours:linear+janus_loss"] if case.loss == "fused_linear" else [])
        out += [(n, None, "janus_kernels.losses not available") for n in names]
    else:
        out += [(n, f, None) for n, f in _ours(case, losses).items()]
    too_big = _eager_bytes(case) > settings.mem_limit_gb * 1024 ** 3
    big_why = f"estimated eager memory > --mem-limit-gb {settings.mem_limit_gb:g}"
    out.append(("eager", _EAGER[case.loss], big_why if too_big else None))
    if not settings.compile:
        out.append(("compiled", None, "torch.compile not run in --quick (pass --compile)"))
    else:
        if case.loss not in _COMPILED:
            _COMPILED[case.loss] = torch.compile(_EAGER[case.loss], dynamic=False)
        out.append(("compiled", _COMPILED[case.loss], big_why if too_big else None))
    return out


def _prepare(name: str, fn: Optional[Callable], why: Optional[str], case: LossCase,
             pass_: str, inp: Dict[str, Any], ref_loss: Optional[float], settings: Settings,
             budget: CallBudget) -> Tuple[Dict[str, Any], Optional[Callable[[], Any]]]:
    """The row of one contender and the call to time (None when skipped, failed or
    time-boxed); the untimed first call gives the loss value, the compile time and (where it
    does not compile) the peak memory. The baselines are time-boxed as in
    benchmarks/timebox.py."""
    row: Dict[str, Any] = {"case": case.loss, "rows": case.rows, "V": case.vocab,
                           "D": case.hidden or None, "dtype": dtype_name(case.dtype),
                           "pass": pass_, "contender": name, "status": "ok",
                           "logits_mb": _logit_rows(case) * case.vocab * 4 / 2 ** 20}
    compiles = name == "compiled"
    baseline = not name.startswith("ours")
    kind, work = (name, row["dtype"], pass_), _work(case, pass_)
    if why is None and fn is not None and baseline:
        why = budget.skip_compile() if compiles else budget.skip_before_call(kind, work)
    if why is not None or fn is None:
        row.update(status="skipped", note=why)
        return row, None
    if pass_ == "fwd":
        call = lambda: fn(**inp)               # noqa: E731
    else:
        keys = _float_keys(inp)
        g_inp = {k: (v.detach().requires_grad_(True) if k in keys else v) for k, v in inp.items()}
        call = lambda: torch.autograd.grad(fn(**g_inp), [g_inp[k] for k in keys])  # noqa: E731
    try:
        out, t_first, row["peak_mb"] = first_call(call, settings.device,
                                                  not (compiles or settings.is_cuda))
        if pass_ == "fwd":
            row["loss"] = value = float(out)
            if ref_loss is not None and ref_loss != 0:
                row["rel_diff"] = abs(value - ref_loss) / abs(ref_loss)
        del out
        if compiles:
            row["compile_s"] = t_first
    except Exception as e:  # noqa: BLE001 - a failing contender is a row, not a crash
        row.update(status="failed", note=f"failed: {error_line(e)}")
        return row, None
    if settle_first_call(budget, row, compiles=compiles, baseline=baseline, kind=kind,
                         work=work, seconds=t_first, label=case.label):
        return row, None
    return row, call


def _work(case: LossCase, pass_: str) -> float:
    """Work units of one call, for the time-box predictions: logit entries, x 3 for fwd+bwd."""
    return _logit_rows(case) * case.vocab * (1.0 if pass_ == "fwd" else 3.0)


def _logit_rows(case: LossCase) -> int:
    R = case.rows
    return {"symmetric_kl": 2 * R, "cross_entropy": R, "janus_loss": 2 * R,
            "fused_linear": R}[case.loss]


def _fused_linear_memory_note(settings: Settings, log: Callable[[str], None],
                              rows: int = 8192, V: int = 32000, D: int = 512) -> str:
    """The issue's memory check: peak memory of one fp32 fwd+bwd of fused_linear_janus_loss
    vs the same criterion on materialized logits (projection + janus_loss), at rows = 8192
    (N_ar = R/2, M = R/4), V = 32000, D = 512. One call each (no timing)."""
    losses, why = optional_import("janus_kernels.losses")
    if losses is None:
        return f"fused_linear memory check skipped: janus_kernels.losses not available ({why})"
    case = LossCase("fused_linear", rows, V, D)
    inp = _inputs(case, case_generator(settings.seed, "loss/fused_linear_memory"),
                  settings.device)
    small = _inputs(LossCase("fused_linear", 256, V, D), case_generator(settings.seed, "warm"),
                    settings.device)
    keys = _float_keys(inp)
    peaks = {}
    for name, fn in _ours(case, losses).items():
        for data, measure in ((small, False), (inp, True)):  # warm-up: one-time buffers
            g_inp = {k: (v.detach().requires_grad_(True) if k in keys else v)
                     for k, v in data.items()}
            call = lambda: torch.autograd.grad(fn(**g_inp), [g_inp[k] for k in keys])  # noqa
            gc.collect()
            if measure:
                peaks[name] = peak_memory_mb(call, settings.device)
            else:
                call()
            del g_inp
    a, b = peaks["ours"], peaks["ours:linear+janus_loss"]
    if a is None or b is None:
        return "fused_linear memory check: peak memory not measurable on this platform"
    msg = (f"fused_linear memory (rows={rows}, V={V}, D={D}, fp32, fwd+bwd, one call each): "
           f"peak {a:.0f} MB vs {b:.0f} MB with materialized logits (projection + "
           f"janus_loss) = {a / b:.2f}x (target <= 0.3x).")
    log("  " + msg)
    return msg


def _symkl_dram_note(settings: Settings, machine: Dict[str, Any], log: Callable[[str], None],
                     R: int = 4096, V: int = 32000) -> str:
    """The issue's kernel-efficiency check for symmetric_kl fwd+bwd at R x V fp32: the kernel
    alone (gradients written into buffers whose pages are already mapped, through the
    benchmark-only op janus::symkl_rows_bwd_into) against the DRAM bound, i.e. its traffic
    (forward reads x, y; backward reads x, y and writes dx, dy: 6 R V 4 bytes) at the copy
    bandwidth measured at the start of this run."""
    losses, why = optional_import("janus_kernels.losses")
    bw = machine.get("copy_gb_s")
    if losses is None or not hasattr(torch.ops.janus, "symkl_rows_bwd_into") or not bw:
        return f"symmetric_kl DRAM check skipped ({why or 'extension or copy bandwidth missing'})"
    gen = case_generator(settings.seed, "loss/symkl_dram")
    x, y = (2.0 * torch.randn(R, V, generator=gen) for _ in range(2))
    dx, dy = torch.zeros_like(x), torch.zeros_like(y)          # touched once, reused
    grad = torch.full((R,), 1.0 / R)

    def kernel():
        loss, st = torch.ops.janus.symkl_rows_fwd(x, y, None, 1.0)
        torch.ops.janus.symkl_rows_bwd_into(grad, x, y, st, None, 1.0, dx, dy)

    def op():
        torch.ops.janus.symkl_rows_bwd(grad, x, y, torch.ops.janus.symkl_rows_fwd(
            x, y, None, 1.0)[1], None, 1.0)
    t = time_interleaved({"kernel": kernel, "op": op}, settings)
    bound_ms = 6.0 * R * V * 4 / (bw * 1e9) * 1e3
    msg = (f"symmetric_kl fwd+bwd kernel alone at {R}x{V} fp32 (gradients into already-mapped "
           f"buffers): {t['kernel'].ms:.0f} ms vs the DRAM bound {bound_ms:.0f} ms "
           f"(6 R V 4 bytes at the measured {bw:.1f} GB/s copy rate) = "
           f"{100 * bound_ms / t['kernel'].ms:.0f}% of the bound (target >= 80%); the op as "
           f"called (gradients from its output pool): {t['op'].ms:.0f} ms (CPU util "
           f"{t['kernel'].cpu_util or float('nan'):.2f}).")
    log("  " + msg)
    return msg


def run(settings: Settings, machine: Dict[str, Any],
        log: Callable[[str], None] = print) -> SuiteResult:
    res = SuiteResult("loss")
    budget = settings.call_budget()
    t_suite = time.perf_counter()
    for case in plan(settings):
        if not settings.selected(case.loss, None, dtype_name(case.dtype)):
            continue
        inp = _inputs(case, case_generator(settings.seed, f"loss/{case.label}"), settings.device)
        contenders = _contenders(case, settings, res)
        # the eager loss value is the reference for the sanity column rel_diff
        try:
            with torch.no_grad():
                ref_loss = float(_EAGER[case.loss](**inp))
        except Exception:  # noqa: BLE001
            ref_loss = None
        for pass_ in PASSES:
            rows, fns = [], {}
            for n, f, why in contenders:
                row, call = _prepare(n, f, why, case, pass_, inp, ref_loss, settings, budget)
                rows.append(row)
                if call is not None:
                    fns[n] = call
            time_rows({r["contender"]: r for r in rows}, fns, settings)
            del fns
            for r in rows:      # the timed medians predict the next cases better
                if r["status"] == "ok" and not r["contender"].startswith("ours"):
                    budget.record((r["contender"], r["dtype"], pass_), _work(case, pass_),
                                  r["ms"] / 1e3, case.label)
            ours = next((r for r in rows if r["contender"] == "ours" and r["status"] == "ok"), None)
            for r in rows:
                if ours is not None and r["status"] == "ok":
                    r["vs_ours"] = r["ms"] / ours["ms"]
            res.rows.extend(rows)
            log("  " + f"{case.label} {pass_}: "
                + ", ".join(progress_cell(r, digits=1) for r in rows))
        del inp
        gc.collect()
    if settings.mode != "quick" and settings.selected("fused_linear", None, "fp32"):
        res.notes.append(_fused_linear_memory_note(settings, log))
    if settings.mode != "quick" and not settings.is_cuda and \
            settings.selected("symmetric_kl", None, "fp32"):
        res.notes.append(_symkl_dram_note(settings, machine, log))
    res.notes.append("janus_loss: N_ar = R AR rows, M = R/2 masked rows; fused_linear: "
                     "N_ar = R/2, M = R/4, tied (V, D) projection without bias.")
    res.notes.append("logits_mb = size of the float32 logits the loss reads (for "
                     "fused_linear: the logits it avoids materializing).")
    res.seconds = time.perf_counter() - t_suite
    return res
