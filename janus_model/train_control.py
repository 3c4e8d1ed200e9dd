"""What governs the training loop from outside the model: the learning-rate schedule and the
stop signal.

fairseq's inverse-square-root schedule, with linear warm-up from ``warmup_init_lr``::

    lr(n) = init + n·(lr - init)/W      for n < W      (n = updates done before this one)
          = lr · sqrt(W / n)            for n >= W

SIGINT / SIGTERM do not kill a run: :class:`StopSignal` records them and the trainer stops at
the next update boundary, so the checkpoint it writes resumes exactly (a second SIGINT aborts).
"""
from __future__ import annotations

import math
import signal
import threading
from typing import Dict

import torch

__all__ = ["InverseSqrtSchedule", "StopSignal"]


class InverseSqrtSchedule:
    """fairseq's inverse_sqrt (see the module docstring); sets the optimiser's lr."""

    def __init__(self, optimizer: torch.optim.Optimizer, lr: float, warmup: int,
                 init_lr: float = 1e-7):
        self.optimizer, self.lr, self.warmup, self.init_lr = optimizer, lr, warmup, init_lr
        self.num_updates = 0

    def lr_at(self, n: int) -> float:
        if n < self.warmup:
            return self.init_lr + n * (self.lr - self.init_lr) / self.warmup
        return self.lr * math.sqrt(self.warmup / n)

    def apply(self) -> float:
        """Set the lr for the next update (after ``num_updates`` done)."""
        lr = self.lr_at(self.num_updates)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        return lr

    def state_dict(self) -> Dict:
        return {"num_updates": self.num_updates, "lr": self.lr, "warmup": self.warmup,
                "init_lr": self.init_lr}

    def load_state_dict(self, s: Dict) -> None:
        self.num_updates = int(s["num_updates"])


class StopSignal:
    """SIGINT/SIGTERM -> stop at the next update boundary (a second SIGINT aborts)."""

    def __init__(self):
        self.requested = False
        self._old: Dict[int, object] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
