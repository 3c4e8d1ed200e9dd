"""Side-by-side analysis of several models (``python -m janus_model compare``): the paper's
tables for JANUS vs its baselines from the JSON reports that ``evaluate --json`` writes.

* BLEU of NAR mask-predict per iteration T and of AR beam search, one column per model
  (paper Table 1 / Fig. 4);
* NAR token repetition at T = 1/4/10 (paper Table 3);
* latency at batch size 1, AR beam vs NAR per T, with the speed-up over each model's own AR
  decoder where it has one (paper Table 2);
* a plot of BLEU per iteration with one line per model and the AR BLEUs as dashed lines.
"""
from __future__ import annotations

import json
from typing import Dict, List, Mapping, Optional, Sequence

__all__ = ["load_report", "format_comparison", "plot_comparison"]


def _int_keys(d: Mapping) -> Dict:
    """JSON turns the iteration keys into strings; "ar" stays a string."""
    return {(int(k) if str(k).lstrip("-").isdigit() else k): v for k, v in d.items()}


def load_report(path: str) -> Dict:
    """An ``evaluate --json`` report, with integer iteration keys restored."""
    with open(path, encoding="utf-8") as f:
        rep = json.load(f)
    for key in ("bleu_nar", "repetition", "latency_ms"):
        rep[key] = _int_keys(rep.get(key, {}))
    return rep


def _fmt(v: Optional[float], spec: str, unit: str = "") -> str:
    return format(v, spec) + unit if v is not None else "-"


def _table(title: str, labels: Sequence[str], rows: List[tuple], spec: str, unit: str = ""
           ) -> List[str]:
    w = max(10, *(len(n) + 2 for n in labels))
    out = [title, f"  {'':<26}" + "".join(f"{n:>{w}}" for n in labels)]
    for name, vals in rows:
        out.append(f"  {name:<26}" + "".join(f"{_fmt(v, spec, unit):>{w}}" for v in vals))
    return out + [""]


def format_comparison(reports: Mapping[str, Dict]) -> str:
    """Plain-text tables, one column per labelled report."""
    labels = list(reports)
    reps = [reports[n] for n in labels]
    n_sent = sorted({r.get("n_sentences") for r in reps})
    Ts = sorted({T for r in reps for T in r["bleu_nar"]})
    bleu_rows = [(f"NAR mask-predict, T={T}", [r["bleu_nar"].get(T) for r in reps]) for T in Ts]
    beams = sorted({r.get("ar_beam") for r in reps if "bleu_ar" in r})
    bleu_rows.append((f"AR beam {'/'.join(map(str, beams))}", [r.get("bleu_ar") for r in reps]))
    out = _table(f"BLEU (sacreBLEU; {'/'.join(map(str, n_sent))} sentences)", labels, bleu_rows,
                 ".2f")
    Rs = sorted({T for r in reps for T in r["repetition"]})
    if Rs:
        rows = [(f"NAR mask-predict, T={T}",
                 [100 * r["repetition"][T] if T in r["repetition"] else None for r in reps])
                for T in Rs]
        rows.append(("AR beam", [100 * r["repetition_ar"] if "repetition_ar" in r else None
                                 for r in reps]))
        out += _table("Token repetition ratio (%)", labels, rows, ".2f")
    Ls = sorted({T for r in reps for T in r["latency_ms"] if T != "ar"})
    rows = [("AR beam", [r["latency_ms"].get("ar") for r in reps])]
    rows += [(f"NAR mask-predict, T={T}", [r["latency_ms"].get(T) for r in reps]) for T in Ls]
    out += _table("Latency at batch size 1 (ms/sample)", labels, rows, ".1f")
    speed = [(name, [(r["latency_ms"]["ar"] / v) if v and "ar" in r["latency_ms"] else None
                     for r, v in zip(reps, vals)]) for name, vals in rows[1:]]
    if any(v is not None for _, vals in speed for v in vals):
        out += _table("Speed-up of NAR over the same model's AR beam", labels, speed, ".2f", "x")
    return "\n".join(out).rstrip() + "\n"


def plot_comparison(reports: Mapping[str, Dict], path: str,
                    title: str = "BLEU per mask-predict iteration") -> None:
    """PNG: one NAR BLEU-per-T line per model, dashed AR BLEU lines."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for i, (name, rep) in enumerate(reports.items()):
        color = f"C{i}"
        if rep["bleu_nar"]:
            Ts = sorted(rep["bleu_nar"])
            ax.plot(Ts, [rep["bleu_nar"][t] for t in Ts], "o-", color=color,
                    label=f"{name} NAR")
        if "bleu_ar" in rep:
            ax.axhline(rep["bleu_ar"], color=color, ls="--",
                       label=f"{name} AR beam {rep.get('ar_beam')}")
    ax.set_xlabel("mask-predict iterations T (0 = single pass)")
    ax.set_ylabel("BLEU")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
