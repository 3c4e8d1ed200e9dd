"""Time-boxing of slow calls, so one baseline that takes seconds per call (eager bf16 attention
on a CPU without native bf16 GEMMs: 24 s per call on a Zen 2) cannot stretch a run to an hour.

Per run there is a per-call budget (``Settings.call_budget_s``) and, per suite, a budget for
torch.compile's first calls (``Settings.compile_budget_s``). The rules, applied by the suites:

* a call that takes longer than the per-call budget is measured once: the timing loop
  (``common.time_interleaved``) drops a contender after such a call, and a baseline whose
  untimed first call (no compile in it) took that long keeps that call as its measurement
  (``timeboxed`` in its row, "1 call" in the tables) instead of being called again;
* a baseline whose next call is predicted to take more than ``PREDICT_MARGIN`` x the budget
  is not called at all: the prediction scales its seconds per unit of work, measured on its
  last call of the same kind (contender, dtype, pass) earlier in the run, to this case's work.
  The margin absorbs the per-call overhead that makes small cases look slow per unit of work;
* a compiled contender is skipped once the suite's compile budget is spent (cold inductor
  compiles take tens of seconds each on a small CPU).

Skipped rows say why, with the numbers the decision was made from.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Hashable, Optional, Tuple

__all__ = ["PREDICT_MARGIN", "CallBudget"]

#: skip without calling only when the prediction exceeds the per-call budget by this factor
PREDICT_MARGIN = 2.0


@dataclasses.dataclass
class CallBudget:
    """The budgets of one suite run and what it has seen so far. ``limit_s <= 0`` disables
    the per-call rules; ``compile_limit_s < 0`` disables the compile rule."""

    limit_s: float
    compile_limit_s: float = -1.0
    compile_spent_s: float = 0.0
    # kind -> (seconds per unit of work, seconds of that call, label of the case it ran on)
    _seen: Dict[Hashable, Tuple[float, float, str]] = dataclasses.field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return self.limit_s > 0

    def predicted_s(self, kind: Hashable, work: float) -> Optional[float]:
        """Seconds a call of ``kind`` on ``work`` units is expected to take (None: never seen)."""
        seen = self._seen.get(kind)
        return None if seen is None else seen[0] * work

    def skip_before_call(self, kind: Hashable, work: float) -> Optional[str]:
        """Why a call of ``kind`` on ``work`` units should not be made at all, or None."""
        if not self.enabled:
            return None
        est = self.predicted_s(kind, work)
        if est is None or est <= PREDICT_MARGIN * self.limit_s:
            return None
        _, secs, label = self._seen[kind]
        return (f"not run: ~{est:.3g} s per call predicted from its {secs:.3g} s call on "
                f"{label}, over {PREDICT_MARGIN:g}x the per-call budget of {self.limit_s:g} s "
                f"(--call-budget-s)")

    def record(self, kind: Hashable, work: float, seconds: float, label: str) -> None:
        """Remember what one call of ``kind`` on ``work`` units took, for later predictions
        (the latest wins: a timed median replaces the first call, which pays one-time costs
        such as oneDNN's kernel generation)."""
        if work > 0 and seconds > 0:
            self._seen[kind] = (seconds / work, seconds, label)

    def observe(self, kind: Hashable, work: float, seconds: float, label: str) -> bool:
        """``record`` a first call; True when it exceeded the per-call budget, i.e. that call
        is to be its only measurement (an upper bound on a steady-state call)."""
        self.record(kind, work, seconds, label)
        return self.enabled and seconds > self.limit_s

    def timebox_note(self, seconds: float) -> str:
        return (f"time-boxed: one call ({seconds:.3g} s) measured, over the per-call budget of "
                f"{self.limit_s:g} s (--call-budget-s)")

    # ------------------------------------------------------------------ torch.compile
    def skip_compile(self) -> Optional[str]:
        """Why a contender that compiles should not be started, or None."""
        if self.compile_limit_s < 0 or self.compile_spent_s <= self.compile_limit_s:
            return None
        return (f"not run: this suite's torch.compile budget ({self.compile_limit_s:g} s, "
                f"--compile-budget-s) is spent ({self.compile_spent_s:.3g} s of first calls that "
                f"compiled)")

    def add_compile(self, seconds: float) -> None:
        self.compile_spent_s += max(seconds, 0.0)
