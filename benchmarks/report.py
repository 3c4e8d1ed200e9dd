"""Results JSON -> the BENCHMARKS.md tables (and the PNG plots).

    python -m benchmarks.report benchmarks/results/results.json -o BENCHMARKS.md [--plots]

``render(data, image_dir)`` returns the Markdown; ``plots(data, out_dir)`` writes the PNGs
next to the JSON. Cells read "time (ratio x)" where the ratio is the contender's time over
ours (above 1: ours is faster).
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .common import bar_chart, fmt_num, markdown_table
from .isa import header_line

__all__ = ["render", "plots", "main"]

ATTN_BASELINES = ("eager_dense", "sdpa_dense", "flex_compiled")
LOSS_BASELINES = ("eager", "compiled")


# ============================================================================== helpers
def _ok(r: Dict[str, Any]) -> bool:
    return r.get("status") == "ok"


def _cell(r: Optional[Dict[str, Any]], base: Optional[str] = None) -> str:
    """'12.3 (4.56x)' for a measured row (the ratio to ours, left out on ``base``, the row
    the ratios are taken against; '1 call' when time-boxed), '—' when absent, 'skip' (with
    the predicted seconds per call when time-boxed away), 'fail: <error type>' otherwise (the
    whole message is listed under "Skipped or failed")."""
    if r is None:
        return "—"
    if r.get("status") == "skipped":
        return f"skip (~{fmt_num(r['predicted_s'])} s/call)" if r.get("predicted_s") else "skip"
    if not _ok(r):
        note = r.get("note") or ""
        kind = note.split(":", 2)[1].strip() if note.startswith("failed:") else note
        return f"fail: {kind[:40]}" if kind else "fail (no message recorded)"
    s = fmt_num(r["ms"])
    extra = []
    if r.get("vs_ours") is not None and r.get("contender") != base:
        extra.append(f"{fmt_num(r['vs_ours'])}x")
    if r.get("timeboxed"):
        extra.append("1 call")
    return s + (f" ({', '.join(extra)})" if extra else "")


def _group(rows: Sequence[Dict[str, Any]], keys: Sequence[str]
           ) -> List[Tuple[Tuple, List[Dict[str, Any]]]]:
    """Rows grouped by ``keys``, in first-seen order."""
    out: Dict[Tuple, List[Dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(tuple(r.get(k) for k in keys), []).append(r)
    return list(out.items())


def _mem(rows: Dict[str, Dict[str, Any]], names: Sequence[str]) -> str:
    return " / ".join(fmt_num(rows[n].get("peak_mb")) if n in rows and _ok(rows[n]) else "—"
                      for n in names)


def _util(rs: Sequence[Dict[str, Any]]) -> Optional[float]:
    us = [r["cpu_util"] for r in rs if _ok(r) and r.get("cpu_util") is not None]
    return min(us) if us else None


def _skipped(suite: Dict[str, Any]) -> List[str]:
    lines = [f"- {s}" for s in suite.get("skipped", [])]
    seen = set()
    for r in suite.get("rows", []):
        if r.get("status") in ("skipped", "failed") and r.get("note"):
            what = r.get("contender") or r.get("config")
            line = f"- {what}: {r['note']}"
            if line not in seen and not any(r["note"] in s for s in suite.get("skipped", [])):
                seen.add(line)
                lines.append(line)
    return lines


# ============================================================================= sections
def _header(data: Dict[str, Any]) -> str:
    m = data.get("meta", {})
    dev = m.get("gpu") or m.get("cpu", "?")
    lines = [
        "# janus-kernels benchmarks",
        "",
        f"Run {m.get('date_utc', '?')} UTC, mode `{m.get('mode')}`, device `{m.get('device')}` "
        f"({dev}), {m.get('threads')} threads of {m.get('cores')} cores; torch "
        f"{m.get('torch')}, triton {m.get('triton')}, extension `{m.get('extension')}`, "
        f"commit {m.get('git_commit')}. Load average at start {m.get('loadavg_start')}, at end "
        f"{m.get('loadavg_end')}; total {fmt_num(m.get('seconds'))} s. "
        f"THP_MEM_ALLOC_ENABLE={m.get('THP_MEM_ALLOC_ENABLE')}.",
        "",
        header_line(m),
        "",
        "Times are medians (ms) over the repeats; `(Nx)` = that contender's time / ours "
        "(above 1: ours is faster). CPU util = process CPU time / (wall x threads): well "
        "below 1 means other processes took the cores during that measurement, so compare "
        "within one run. Peak memory = what one call adds above its inputs (CPU: peak RSS "
        "delta; CUDA: max_memory_allocated delta). `1 call`: time-boxed, one call took longer "
        f"than the per-call budget ({fmt_num((data.get('settings') or {}).get('call_budget_s'))} "
        "s) and was the only one measured; `skip (~N s/call)`: predicted from that contender's "
        "earlier calls to take over twice the budget, so not run.",
    ]
    return "\n".join(lines)


def _na(mc: Dict[str, Any], *keys: str) -> str:
    """The value of the first key that has one, else 'n/a (reason)'."""
    for k in keys:
        if mc.get(k) is not None:
            return fmt_num(mc[k])
    why = next(((mc.get("na") or {}).get(k) for k in keys if (mc.get("na") or {}).get(k)), None)
    return f"n/a ({why})" if why else "n/a"


def _unit(value: str, unit: str) -> str:
    return value if value.startswith("n/a") else f"{value} {unit}"


def _machine(data: Dict[str, Any]) -> str:
    mc = data.get("machine") or {}
    if not mc:
        return ""
    level = mc.get("isa_level") or "n/a"

    def pair(a: str, b: str, unit: str) -> str:
        x, y = _na(mc, a), _na(mc, b)
        return x if x == y and x.startswith("n/a") else _unit(f"{x} / {y}", unit)

    rows = [
        ("fp32 torch.mm", f"{fmt_num(mc.get('gemm_fp32_gflops'))} GFLOP/s "
                          f"(n={mc.get('gemm_fp32_n', mc.get('gemm_n'))})"),
        ("bf16 torch.mm", f"{fmt_num(mc.get('gemm_bf16_gflops'))} GFLOP/s"
                          + (f" (n={mc['gemm_bf16_n']})" if mc.get("gemm_bf16_n") else "")),
        ("fp32 torch.bmm tiles 64x64@64x512 / 64x512@512x64",
         pair("tile_qk_fp32_gflops", "tile_pv_fp32_gflops", "GFLOP/s")),
        ("bf16 torch.bmm tiles 64x64@64x512 / 64x512@512x64",
         pair("tile_qk_bf16_gflops", "tile_pv_bf16_gflops", "GFLOP/s")),
        (f"fp32 brgemm tile, ours at {level} (QK 64x512x64 / PV 64x64x512)",
         pair("brgemm_qk_fp32_gflops", "brgemm_pv_fp32_gflops", "GFLOP/s")),
        (f"bf16 brgemm tile, ours at {level}",
         pair("brgemm_qk_bf16_gflops", "brgemm_pv_bf16_gflops", "GFLOP/s")),
        (f"fp32 FMA loop (registers only, all threads) at {level}",
         _unit(_na(mc, "fma_fp32_gflops"), "GFLOP/s")),
    ]
    for dt in ("fp32", "bf16"):
        if f"peak_{dt}_source" in mc:
            of = "the above" + ("" if dt == "fp32" else " and the fp32 peak")
            rows.append((f"**{dt} compute peak** (the largest of {of})",
                         f"**{fmt_num(mc.get(f'peak_{dt}_gflops'))} GFLOP/s** from "
                         f"{mc.get(f'peak_{dt}_source')}"))
    rows += [
        ("torch.exp", f"{fmt_num(mc.get('exp_gelem_s'))} Gelem/s"),
        ("copy (read + write counted)",
         f"{fmt_num(mc.get('copy_gb_s'))} GB/s ({fmt_num(mc.get('copy_mb'))} MB)"),
        ("read (sum)", f"{fmt_num(mc.get('read_gb_s'))} GB/s"),
        ("CPU util during these", fmt_num(mc.get("cpu_util"))),
    ]
    t = markdown_table([{"q": a, "v": b} for a, b in rows], [("q", "quantity"), ("v", "measured")],
                       formats={"q": str, "v": str})
    return ("The compute peak is the largest GEMM rate this machine showed, so that useful "
            "FLOPs / peak is a floor no kernel beats; a bf16 kernel can always widen to fp32, "
            "so the bf16 peak is at least the fp32 one.\n\n" + t)


def _floor_cell(ours: Optional[Dict[str, Any]], sdpa: Optional[Dict[str, Any]]) -> str:
    """'floor (sdpa / floor)': the machine's lower bound on the op's time and the largest
    speed-up over SDPA it permits; the bound's kind is marked m (memory) or c (compute)."""
    if not ours or not ours.get("floor_ms"):
        return "-"
    kind = "m" if ours.get("memory_floor_ms", 0) >= ours.get("compute_floor_ms", 0) else "c"
    cell = f"{fmt_num(ours['floor_ms'])}{kind}"
    if sdpa and _ok(sdpa) and sdpa.get("vs_floor"):
        cell += f" ({fmt_num(sdpa['vs_floor'])}x)"
    return cell


def _attention(suite: Dict[str, Any], image_dir: Optional[str]) -> str:
    rows = suite.get("rows", [])
    ours_names = sorted({r["contender"] for r in rows if r["contender"].startswith("ours")})
    table = []
    for (case, shape, dt, ps), rs in _group(rows, ("case", "shape", "dtype", "pass")):
        by = {r["contender"]: r for r in rs}
        first_ours = next((by[n] for n in ours_names if n in by and _ok(by[n])), None)
        t = {"mask": case, "shape": shape, "dtype": dt, "pass": ps,
             "dims": f"{rs[0]['B']}x{rs[0]['Lq']}x{rs[0]['Lk']}",
             "density": rs[0].get("density"),
             "gflops": first_ours.get("gflops") if first_ours else None,
             "pct": first_ours.get("pct_peak") if first_ours else None,
             "mem": _mem(by, [ours_names[0] if ours_names else "", "eager_dense", "sdpa_dense"]),
             "floor": _floor_cell(first_ours, by.get("sdpa_dense")),
             "util": _util(rs)}
        base = first_ours["contender"] if first_ours else None
        for n in ours_names + list(ATTN_BASELINES):
            t[n] = _cell(by.get(n), base)
        table.append(t)
    cols = [("mask", "mask"), ("shape", "shape"), ("dtype", "dtype"), ("pass", "pass"),
            ("dims", "B x Lq x Lk"), ("density", "density")]
    cols += [(n, f"{n} ms" + (" (x)" if i else "")) for i, n in enumerate(ours_names)]
    cols += [(n, f"{n} ms (x)") for n in ATTN_BASELINES]
    cols += [("gflops", "ours useful GFLOP/s"), ("pct", "% compute peak"),
             ("floor", "floor ms (max x vs sdpa)"),
             ("mem", "peak MB ours / eager / sdpa"), ("util", "CPU util (min)")]
    fm = {k: str for k in ["mask", "shape", "dtype", "pass", "dims", "mem", "floor"] + ours_names
          + list(ATTN_BASELINES)}
    out = [f"* {n}" for n in suite.get("notes", [])]
    out += ["", markdown_table(table, cols, fm)]
    # mask build and compile costs, per case (fwd fp32 rows carry them)
    builds = []
    for (case, shape), rs in _group(rows, ("case", "shape")):
        by = {}
        for r in rs:
            by.setdefault(r["contender"], r)
        e, s, f = by.get("eager_dense", {}), by.get("sdpa_dense", {}), by.get("flex_compiled", {})
        comp = [r.get("compile_s") for r in rs
                if r["contender"] == "flex_compiled" and r.get("compile_s") is not None]
        builds.append({"mask": case, "shape": shape, "builder": e.get("mask_builder"),
                       "eager": e.get("mask_ms"), "mat": s.get("mask_ms"),
                       "bm": f.get("mask_ms"), "comp": max(comp) if comp else None})
    out += ["", "Dense-mask and block-mask build cost per batch (ms), and FlexAttention's "
            "first-call compile time (s):", "",
            markdown_table(builds, [("mask", "mask"), ("shape", "shape"),
                                    ("builder", "eager_dense builder"),
                                    ("eager", "eager_dense build ms (in its time)"),
                                    ("mat", "materialize() ms (sdpa)"),
                                    ("bm", "create_block_mask ms (flex)"),
                                    ("comp", "flex compile s")],
                           {"mask": str, "shape": str, "builder": str})]
    head = _headline(rows)
    if head:
        out += ["", head]
    diffs = [r.get("max_diff") for r in rows if _ok(r) and r.get("max_diff") is not None
             and r["dtype"] == "fp32"]
    if diffs:
        out += ["", f"Sanity: largest fp32 difference of any baseline from ours (forward "
                    f"outputs on rows that see a key; gradients) = {max(diffs):.2e}."]
    if image_dir is not None:
        for png in suite.get("plots", []):
            out += ["", f"![{png}]({os.path.join(image_dir, png)})"]
    return "\n".join(out)


def _headline(rows: Sequence[Dict[str, Any]], case: str = "janus_nar", shape: str = "long512",
              pass_: str = "fwd+bwd") -> Optional[str]:
    """The speed-up the project tracks (issue 12): ours over SDPA + dense mask on the JANUS
    NAR/AUX fwd+bwd at B=8 / Nmax=512, per dtype, at the ISA level in the section header."""
    parts = []
    for r in rows:
        if (r["case"], r["shape"], r["pass"], r["contender"]) == (case, shape, pass_,
                                                                 "sdpa_dense") and _ok(r):
            if r.get("vs_ours") is not None:
                parts.append(f"{r['dtype']} **{fmt_num(r['vs_ours'])}x**")
    if not parts:
        return None
    r0 = next(r for r in rows if (r["case"], r["shape"]) == (case, shape))
    return (f"Headline: {case} {pass_} at B={r0['B']} / Nmax={r0['Nmax']}, ours vs SDPA + dense "
            f"mask (sdpa time / ours): " + ", ".join(parts) + ".")


def _loss(suite: Dict[str, Any], image_dir: Optional[str]) -> str:
    rows = suite.get("rows", [])
    ours_names = [n for n in ("ours", "ours:linear+janus_loss")
                  if any(r["contender"] == n for r in rows)]
    table = []
    for (case, R, V, D, dt, ps), rs in _group(rows, ("case", "rows", "V", "D", "dtype", "pass")):
        by = {r["contender"]: r for r in rs}
        t = {"loss": case, "size": f"{R}x{V}" + (f", D={D}" if D else ""), "dtype": dt,
             "pass": ps, "logits": rs[0].get("logits_mb"),
             "mem": _mem(by, ["ours", "eager", "compiled"]),
             "comp": by.get("compiled", {}).get("compile_s"),
             "diff": max((r.get("rel_diff") or 0.0) for r in rs if _ok(r))
             if ps == "fwd" and any(_ok(r) for r in rs) else None,
             "util": _util(rs)}
        for n in ours_names + list(LOSS_BASELINES):
            t[n] = _cell(by.get(n), "ours")
        table.append(t)
    cols = [("loss", "loss"), ("size", "rows x V"), ("dtype", "dtype"), ("pass", "pass"),
            ("logits", "logits MB")]
    cols += [(n, f"{n} ms" + (" (x)" if n != "ours" else "")) for n in ours_names]
    cols += [(n, f"{n} ms (x)") for n in LOSS_BASELINES]
    cols += [("mem", "peak MB ours / eager / compiled"), ("comp", "compile s"),
             ("diff", "max rel. loss diff vs eager"), ("util", "CPU util (min)")]
    fm = {k: str for k in ["loss", "size", "dtype", "pass", "mem"] + ours_names
          + list(LOSS_BASELINES)}
    fm["diff"] = lambda x: "—" if x is None else f"{x:.1e}"
    out = [f"* {n}" for n in suite.get("notes", [])]
    out += ["", markdown_table(table, cols, fm)]
    if image_dir is not None:
        for png in suite.get("plots", []):
            out += ["", f"![{png}]({os.path.join(image_dir, png)})"]
    return "\n".join(out)


def _train_step(suite: Dict[str, Any], image_dir: Optional[str]) -> str:
    rows = suite.get("rows", [])
    out = [f"* {n}" for n in suite.get("notes", [])]
    b = suite.get("extra", {}).get("batch")
    if b:
        out += [f"* Batch: {b['B']} sentences, source width {b['src_len']}, target width "
                f"{b['target_len']}, {b['target_tokens']} AR target tokens, "
                f"{b['masked_tokens']} masked tokens."]
    if not rows:
        return "\n".join(out + ["", "_No measurements (see Skipped)._"])
    table = [{**r, "time": _cell({**r, "vs_ours": None})} for r in rows]
    cols = [("config", "configuration"), ("group", "group"), ("switches", "switches"),
            ("loss", "loss (eval)"), ("time", "step ms"), ("spread_pct", "spread %"),
            ("vs_cmlm", "x CMLM (same opts)"),
            ("flops_vs_cmlm", "FLOPs x CMLM"),
            ("step_gflop", "step GFLOP"), ("gflops", "GFLOP/s"), ("peak_mb", "peak MB"),
            ("cpu_util", "CPU util")]
    out += ["", markdown_table(table, cols, {"config": str, "group": str, "switches": str,
                                             "time": str})]
    ratios = suite.get("extra", {}).get("ratios") or {}
    if ratios:
        out += ["", markdown_table([{"k": k, "v": v} for k, v in ratios.items()],
                                   [("k", "ratio"), ("v", "value")], {"k": str})]
    if image_dir is not None:
        for png in suite.get("plots", []):
            out += ["", f"![{png}]({os.path.join(image_dir, png)})"]
    return "\n".join(out)


_SECTIONS = {"attention": ("Attention", _attention), "loss": ("Losses", _loss),
             "train_step": ("Training step", _train_step)}


def _section(title: str, body: str, meta: Dict[str, Any]) -> str:
    """A section: its heading, the CPU / ISA line every table header carries, the body."""
    return f"## {title}\n\n{header_line(meta)}\n\n{body}" if body else ""


def render(data: Dict[str, Any], image_dir: Optional[str] = ".") -> str:
    """The whole Markdown report. ``image_dir``: how the Markdown file reaches the PNGs
    (None: no image links)."""
    meta = data.get("meta", {})
    parts = [_header(data), _section("Machine peaks (measured in this run)", _machine(data), meta)]
    skipped: List[str] = []
    for name, suite in data.get("suites", {}).items():
        if name in _SECTIONS:
            title, fn = _SECTIONS[name]
            parts.append(_section(title, fn(suite, image_dir), meta))
        for line in _skipped(suite):
            skipped.append(f"{line} ({name})")
    if skipped:
        parts.append("## Skipped or failed\n\n" + "\n".join(skipped))
    return "\n\n".join(p for p in parts if p) + "\n"


# ================================================================================ plots
def plots(data: Dict[str, Any], out_dir: str) -> Tuple[List[str], List[str]]:
    """Write the PNGs into ``out_dir``; records each suite's file names in ``data`` and
    returns (written file names, reasons for plots not written)."""
    written: List[str] = []
    problems: List[str] = []

    def chart(name: str, suite: Dict[str, Any], *args, **kw) -> None:
        why = bar_chart(os.path.join(out_dir, name), *args, **kw)
        if why is None:
            written.append(name)
            suite.setdefault("plots", []).append(name)
        elif why not in problems:
            problems.append(why)

    suites = data.get("suites", {})
    att = suites.get("attention")
    if att and att.get("rows"):
        att["plots"] = []
        rows = att["rows"]
        for (dt, ps), rs in _group(rows, ("dtype", "pass")):
            groups, series = [], {n: [] for n in ATTN_BASELINES}
            for (case, shape), cr in _group(rs, ("case", "shape")):
                by = {r["contender"]: r for r in cr}
                groups.append(f"{case}/{shape}")
                for n in ATTN_BASELINES:
                    r = by.get(n)
                    series[n].append(r.get("vs_ours") if r and _ok(r) else None)
            series = {k: v for k, v in series.items() if any(x is not None for x in v)}
            if series:
                chart(f"attention_speedup_{dt}_{ps.replace('+', '_')}.png", att,
                      f"Attention {dt} {ps}: baseline time / ours (higher = ours faster)",
                      groups, series, "x slower than ours", log=True, hline=(1.0, "ours"))
        groups, series = [], {}
        for (case, shape), cr in _group(rows, ("case", "shape")):
            groups.append(f"{case}/{shape}")
            for r in cr:
                if r["contender"].startswith("ours"):
                    key = f"{r['contender']} {r['dtype']} {r['pass']}"
                    series.setdefault(key, {})[groups[-1]] = r.get("pct_peak") if _ok(r) else None
        series_l = {k: [v.get(g) for g in groups] for k, v in series.items()}
        if any(x is not None for v in series_l.values() for x in v):
            chart("attention_pct_peak.png", att,
                  "Ours: useful GFLOP/s (visible entries only) as % of the same-dtype compute peak",
                  groups, series_l, "% of compute peak")
    loss = suites.get("loss")
    if loss and loss.get("rows"):
        loss["plots"] = []
        for ps, rs in _group(loss["rows"], ("pass",)):
            groups, series = [], {}
            for (case, R, V, dt), cr in _group(rs, ("case", "rows", "V", "dtype")):
                groups.append(f"{case} {R}x{V} {dt}")
                for r in cr:
                    series.setdefault(r["contender"], {})[groups[-1]] = r["ms"] if _ok(r) else None
            series_l = {k: [v.get(g) for g in groups] for k, v in series.items()}
            chart(f"loss_{ps[0].replace('+', '_')}.png", loss, f"Losses {ps[0]}: time per call",
                  groups, series_l, "ms", log=True)
    ts = suites.get("train_step")
    if ts and any(_ok(r) for r in ts.get("rows", [])):
        ts["plots"] = []
        ok = [r for r in ts["rows"] if _ok(r)]
        chart("train_step.png", ts, "One training step (ms)", [r["config"] for r in ok],
              {"step ms": [r["ms"] for r in ok]}, "ms")
    return written, problems


# ================================================================================== CLI
def main(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", help="results.json written by python -m benchmarks")
    ap.add_argument("-o", "--output", help="Markdown file to write (default: stdout)")
    ap.add_argument("--plots", action="store_true",
                    help="(re)write the PNG plots next to the results JSON")
    args = ap.parse_args(argv)
    with open(args.results) as f:
        data = json.load(f)
    res_dir = os.path.dirname(os.path.abspath(args.results))
    if args.plots:
        _, problems = plots(data, res_dir)
        for p in problems:
            print(f"plots: {p}")
    if args.output:
        out_dir = os.path.dirname(os.path.abspath(args.output))
        os.makedirs(out_dir, exist_ok=True)
        image_dir = os.path.relpath(res_dir, out_dir)
        with open(args.output, "w") as f:
            f.write(render(data, image_dir))
        print(f"wrote {args.output}")
    else:
        print(render(data, os.path.relpath(res_dir)))


if __name__ == "__main__":
    main()
