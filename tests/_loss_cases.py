"""The one table of loss test cases, run on every backend: symmetric KL and cross-entropy
rows (R, V) and fused JANUS criterion rows (N, M, V with ignored and duplicate rows). The CPU
suites (tests/test_losses.py, tests/test_janus_loss_fused.py, at each ISA level, and the
reference backend) take every case; the slow backends, the Triton interpreter
(tests/test_triton_loss.py, tests/test_triton_janus_loss.py) and the CUDA emulation
(tests/test_cuda_emu_loss.py), take the SMALL ones. Awkward sizes are in: no rows, V = 1, odd
widths (7, 113, 203, 257, 1271), widths past one block (2051, 3000) and a vocabulary-sized
row (32003). A dtype a backend cannot afford for a case is a skip with its reason."""
from __future__ import annotations

import dataclasses
import enum
from typing import Iterable, Optional, Tuple

import pytest
import torch


class Size(enum.IntEnum):
    SMALL = 1    # every backend, the Triton interpreter and the CUDA emulation included
    MEDIUM = 2   # CPU kernels and the reference only (time)


#: the size classes each kind of suite takes
SLOW_SIZES = (Size.SMALL,)
CPU_SIZES = (Size.SMALL, Size.MEDIUM)


@dataclasses.dataclass(frozen=True)
class RowsCase:
    """R rows of V logits (symmetric KL: two such tensors; cross entropy: one + targets)."""
    name: str
    R: int
    V: int
    T: float = 1.0             # KL temperature
    size: Size = Size.SMALL
    #: dtypes this case skips, with the reason
    skip_dtypes: Tuple[torch.dtype, ...] = ()
    skip_reason: str = ""


_BIG_V = dict(size=Size.MEDIUM, skip_dtypes=(torch.float16, torch.float64),
              skip_reason="V = 32003 runs in float32 / bfloat16 only (time)")

#: symmetric KL: no rows, V = 1, odd widths, several forward blocks and backward column
#: blocks (1271, 2051, 3000), a vocabulary-sized row
KL_CASES = [
    RowsCase("0x7", 0, 7, T=1.7),
    RowsCase("1x1", 1, 1),
    RowsCase("5x7", 5, 7, T=0.5),
    RowsCase("5x113", 5, 113, T=0.7),
    RowsCase("4x1271", 4, 1271, T=2.5),
    RowsCase("2x2051", 2, 2051, T=1.7),
    RowsCase("2x3000", 2, 3000, T=2.0),
    RowsCase("2x32003", 2, 32003, **_BIG_V),
]

#: cross entropy (each run with and without label smoothing, LABEL_SMOOTHING)
CE_CASES = [
    RowsCase("0x7", 0, 7),
    RowsCase("1x1", 1, 1),
    RowsCase("6x7", 6, 7),
    RowsCase("5x113", 5, 113),
    RowsCase("4x1271", 4, 1271),
    RowsCase("3x2051", 3, 2051),
    RowsCase("2x32003", 2, 32003, **_BIG_V),
]
LABEL_SMOOTHING = (0.0, 0.1)


@dataclasses.dataclass(frozen=True)
class JanusCase:
    """N AR rows, M masked rows (NAR and AUX), vocabulary V; which masked / AR targets are
    ignored, whether some AR rows are claimed by several masked rows (dup), and whether the
    AR target of the duplicated row is ignored too (dup_ar_ignored)."""
    name: str
    N: int
    M: int
    V: int
    ignore: Tuple[int, ...] = ()
    ignore_ar: Tuple[int, ...] = ()
    dup: bool = False
    dup_ar_ignored: bool = False
    size: Size = Size.SMALL


JANUS_CASES = [
    JanusCase("N1-M1-V1", 1, 1, 1),
    JanusCase("N7-M3-V7", 7, 3, 7, ignore=(1,), ignore_ar=(0,)),
    JanusCase("N13-M7-V113", 13, 7, 113, ignore_ar=(2, 5)),
    # AR row idx[0] claimed by masked rows 0, 2 and 10
    JanusCase("N25-M11-V1271-dup", 25, 11, 1271, ignore=(3, 4), dup=True),
    # its first claim ignored, and the AR target of that row too
    JanusCase("N9-M5-V300-dup", 9, 5, 300, ignore=(0,), dup=True, dup_ar_ignored=True),
    JanusCase("N9-M0-V203", 9, 0, 203),                                  # M = 0: AR CE only
    JanusCase("N6-M4-V64", 6, 4, 64, ignore=(0, 1, 2, 3)),               # every masked row ignored
    JanusCase("N5-M5-V257", 5, 5, 257, ignore_ar=(0, 1, 2, 3, 4)),      # every AR target ignored
    JanusCase("N5-M5-V2051", 5, 5, 2051, ignore_ar=(0, 1, 2, 3, 4), size=Size.MEDIUM),
]


def _why_not(case, dtype: Optional[torch.dtype]) -> Optional[str]:
    if dtype is not None and dtype in getattr(case, "skip_dtypes", ()):
        return f"{case.name}: {case.skip_reason}"
    return None


def params(cases: Iterable, sizes: Iterable[Size]) -> list:
    """pytest params (id = case name) of the cases of the given size classes."""
    sizes = tuple(sizes)
    return [pytest.param(c, id=c.name) for c in cases if c.size in sizes]


def skip_unless_affordable(case, dtype: torch.dtype) -> None:
    """Skip (with the table's reason) a dtype the case does not run in."""
    reason = _why_not(case, dtype)
    if reason:
        pytest.skip(reason)
