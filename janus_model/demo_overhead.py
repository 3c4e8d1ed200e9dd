"""Part (a) of ``make demo``: the overhead cut, measured on real training.

One JANUS model is trained for the same number of updates three times, from the same
initial weights on the same batches and span masks (every :class:`~janus_model.train.Trainer`
here gets the same :class:`~janus_model.train.TrainConfig`, so the same seed):

* **JANUS, fused**: this package's execution (one encoder pass, structured-mask attention
  generated in-kernel from a per-sample descriptor, only the rows a loss reads projected to
  the vocabulary, fused loss kernels);
* **JANUS, authors' dense**: the authors' design, :meth:`ExecOptions.authors`
  (two encoder passes, per-sample dense 3D masks with eager attention, every decoder row
  projected, the plain-torch loss);
* **CMLM, fused**: the NAR-only baseline with the same fused execution, for the JANUS/CMLM
  cost per update (the paper's ~4-5x training-time ratio).

The two JANUS runs compute the same function, so their losses agree update after update up
to float rounding (dropout is 0: a dropout draw would differ between the two layouts); the
difference of the final weights is reported too. The configurations take turns update by
update, so a change of machine load hits all three alike. The first update of each is not
timed (one-time set-up: allocator, kernel dispatch, Adam state).
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable, Dict, List, Tuple

import torch

from .model import ExecOptions
from .train import Trainer, TrainConfig

__all__ = ["OverheadResult", "OVERHEAD_RUNS", "run_overhead", "format_overhead"]

#: (label, training mode, execution options) of the three runs; the first two must agree.
OVERHEAD_RUNS: Tuple[Tuple[str, str, ExecOptions], ...] = (
    ("JANUS fused", "janus", ExecOptions()),
    ("JANUS authors' dense", "janus", ExecOptions.authors()),
    ("CMLM fused", "cmlm", ExecOptions()),
)


@dataclasses.dataclass
class OverheadResult:
    updates: int
    losses: Dict[str, List[float]]          # label -> training loss of every update
    seconds: Dict[str, float]               # label -> time of the timed updates (2..n)
    max_weight_diff: float                  # max |w_fused - w_dense| after the last update
    target_tokens: float                    # mean target tokens per update

    def ms_per_update(self, label: str) -> float:
        return 1e3 * self.seconds[label] / max(self.updates - 1, 1)


def run_overhead(cfg: TrainConfig, updates: int, max_seconds: float = 0.0,
                 log: Callable[[str], None] = lambda s: None) -> OverheadResult:
    """Train ``OVERHEAD_RUNS`` for ``updates`` updates each (>= 2) from ``cfg`` (its mode is
    replaced per run; its dropout must be 0 for the JANUS losses to agree). ``max_seconds``
    (0: none) stops earlier, after the first round of updates that ends past it (at least
    2 rounds run): the result holds the updates actually done."""
    if updates < 2:
        raise ValueError(f"updates: expected >= 2 (the first one is not timed), got {updates}")
    if cfg.dropout or cfg.attention_dropout or cfg.activation_dropout:
        raise ValueError("cfg: dropout must be 0 for the fused and dense runs to agree "
                         f"(got dropout {cfg.dropout}, attention {cfg.attention_dropout}, "
                         f"activation {cfg.activation_dropout})")
    trainers: Dict[str, Trainer] = {}
    for label, mode, opts in OVERHEAD_RUNS:
        out = os.path.join(cfg.out, label.split()[0].lower() + ("_dense" if opts.attention ==
                                                                 "dense" else "_fused"))
        tr = Trainer(dataclasses.replace(cfg, mode=mode, out=out), resume=False,
                     log=lambda s: None)
        tr.model.exec = dataclasses.replace(opts, backend=tr.model.exec.backend)
        trainers[label] = tr
    losses: Dict[str, List[float]] = {k: [] for k in trainers}
    seconds = {k: 0.0 for k in trainers}
    tokens = 0
    t_start = time.perf_counter()
    for u in range(updates):
        if u >= 2 and max_seconds and time.perf_counter() - t_start > max_seconds:
            updates = u
            break
        for label, tr in trainers.items():
            t0 = time.perf_counter()
            rec = tr.train_step()
            if u > 0:
                seconds[label] += time.perf_counter() - t0
            losses[label].append(rec["loss"])
            if label == OVERHEAD_RUNS[0][0]:
                tokens += rec["ntok"]
        log(f"  update {u + 1}/{updates}: " + ", ".join(
            f"{k} {v[-1]:.4f}" for k, v in losses.items()))
    fused, dense = (trainers[r[0]].model for r in OVERHEAD_RUNS[:2])
    with torch.no_grad():
        diff = max(float((a - b).abs().max()) for a, b in
                   zip(fused.parameters(), dense.parameters()))
    return OverheadResult(updates, losses, seconds, diff, tokens / updates)


def format_overhead(res: OverheadResult, show: int = 6) -> str:
    """Losses side by side (``show`` updates spread over the run) and the cost table."""
    (f_lab, _, _), (d_lab, _, _), (c_lab, _, _) = OVERHEAD_RUNS
    n = res.updates
    picks = sorted({round(i * (n - 1) / max(show - 1, 1)) for i in range(show)})
    lines = [f"  {'update':>6}  {'JANUS fused':>14}  {'JANUS dense':>14}  {'|difference|':>12}"
             f"  {'CMLM fused':>12}"]
    for i in picks:
        a, b = res.losses[f_lab][i], res.losses[d_lab][i]
        lines.append(f"  {i + 1:>6}  {a:14.6f}  {b:14.6f}  {abs(a - b):12.2e}"
                     f"  {res.losses[c_lab][i]:12.6f}")
    worst = max(abs(a - b) for a, b in zip(res.losses[f_lab], res.losses[d_lab]))
    lines.append(f"  largest loss difference over the {n} updates: {worst:.2e}; largest "
                 f"weight difference after them: {res.max_weight_diff:.2e}")
    ms = {k: res.ms_per_update(k) for k in res.seconds}
    lines += ["", f"  {'run':<24}{'ms/update':>10}{'x fused JANUS':>15}{'x CMLM':>9}"]
    for k in (f_lab, d_lab, c_lab):
        lines.append(f"  {k:<24}{ms[k]:10.1f}{ms[k] / ms[f_lab]:15.2f}"
                     f"{ms[k] / ms[c_lab]:9.2f}")
    lines.append(f"  overhead cut: the authors' design takes {ms[d_lab] / ms[f_lab]:.2f}x the "
                 f"time of the fused one per update; a JANUS update costs "
                 f"{ms[f_lab] / ms[c_lab]:.2f}x a CMLM update fused "
                 f"({ms[d_lab] / ms[c_lab]:.2f}x with the authors' design)")
    return "\n".join(lines)
