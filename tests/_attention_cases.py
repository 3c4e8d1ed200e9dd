"""The one table of attention test cases, run on every backend: the CPU kernels (at each ISA
level) and the reference in tests/test_attention.py, Triton (interpreted on CPU, compiled on a
GPU) in tests/test_triton_attention.py, the CUDA kernels emulated on CPU in
tests/test_cuda_emu.py and on a GPU in tests/test_cuda_gpu.py.

A case is a named mask descriptor (every family, awkward sizes 1 / 7 / 113 / 203 / 233, M = 0,
rows that see no key, padding rows and keys, KEY_START and DOCUMENTS tables) with the shape it
runs at (H, Hkv, d, dropout, scale, layout; B comes from the mask) and a size class. Each suite
takes the cases of its budget: the CPU runs everything up to MEDIUM, the slow backends (Triton
interpreter, CUDA emulation) the SMALL subset, compiled GPU kernels everything. A case a
backend cannot take (LIMITS: e.g. the CUDA kernels need d % 8 == 0) is collected as a skipped
test that says why, never dropped silently."""
from __future__ import annotations

import dataclasses
import enum
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import pytest
import torch

import janus_kernels as jk
from janus_kernels.masks import MaskDescriptor

from _mask_cases_hf import HF_CASES

#: the dropout seed of every case with dropout; both Philox key words are nonzero
DROPOUT_SEED = 0x1234_5678_9ABC_DEF0


class Size(enum.IntEnum):
    """Cost class of a case (B * H * Lq * Lk score entries; the interpreters pay per tile)."""
    SMALL = 1    # every backend: the Triton interpreter and the CUDA emulation take these
    MEDIUM = 2   # the CPU kernels too (the slow backends cover the family with a SMALL mask)
    REAL = 3     # compiled GPU kernels only: long tile loops, many row blocks, d = 256


#: the most score entries (B * H * Lq * Lk) a case of each class may have
#: (tests/test_attention.py checks the table against it)
MAX_SCORE_ENTRIES = {Size.SMALL: 120_000, Size.MEDIUM: 1_000_000}


@dataclasses.dataclass(frozen=True)
class AttnCase:
    name: str
    mask: Callable[[], MaskDescriptor]
    size: Size = Size.SMALL
    H: int = 2
    Hkv: Optional[int] = None      # None: H (no GQA)
    d: int = 32
    dropout: float = 0.0
    scale: Optional[float] = None  # None: d ** -0.5
    bshd: bool = False             # q/k/v/dout stored (B, L, H, d): non-contiguous (B, H, L, d)
    #: precision on backends with float32 kernels (CPU, Triton); the CUDA kernels only have
    #: float16 and bfloat16 and run every case in both
    dtype: torch.dtype = torch.float32
    #: fp32-capable backends that also run the case in bfloat16 and float16 (the slow ones
    #: take fewer: their time is spent per tile)
    half: Tuple[str, ...] = ()

    @property
    def kv_heads(self) -> int:
        return self.H if self.Hkv is None else self.Hkv

    @property
    def softmax_scale(self) -> float:
        return self.d ** -0.5 if self.scale is None else self.scale

    def score_entries(self) -> int:
        """B * H * Lq * Lk: the work of one forward, what a size class bounds."""
        m = self.mask()
        return m.batch_size * self.H * m.q_len * m.kv_len


# ------------------------------------------------------------------------------ masks
def _perm(B: int, L: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(L, generator=g) for _ in range(B)]).int()


def _janus_nar_b8_n512() -> MaskDescriptor:
    g = torch.Generator().manual_seed(5)
    n = torch.randint(256, 513, (8,), generator=g)
    m = (0.55 * n).long()
    return jk.janus_nar_mask(n + 2 - m, m)


def _hf_left_pad_2048() -> MaskDescriptor:
    am = torch.arange(2048)[None, :].expand(2, 2048).ge(torch.tensor([[300], [0]])).long()
    return jk.hf_mask(am, 2048, 2048)


CPU, BOTH = ("cpu",), ("cpu", "triton")
#: the shared KEY_START / DOCUMENTS cases also run in bf16 / fp16 (the Triton interpreter takes
#: the two of them it can afford)
_HF_HALF = {"hf_left_pad": BOTH, "hf_left_pad_113": CPU, "documents_causal": CPU,
            "documents_bidirectional": BOTH, "key_start_prefix": CPU}
C = AttnCase
_S, _M, _R = Size.SMALL, Size.MEDIUM, Size.REAL

_TABLE: List[AttnCase] = [
    # --- JANUS NAR / AUX: padding rows and keys, M = 0 (no query rows, no window), GQA
    C("janus_nar", lambda: jk.janus_nar_mask([5, 30, 1, 60], [3, 20, 0, 70]), _M, half=CPU),
    C("janus_nar_padded", lambda: jk.janus_nar_mask([100, 7], [80, 3], 270, 85), _M),
    C("janus_nar_M0", lambda: jk.janus_nar_mask([7, 2], [0, 0])),
    C("janus_nar_M0_mixed", lambda: jk.janus_nar_mask([6, 3, 1], [0, 3, 0], 9, 4), d=16),
    C("janus_nar_small", lambda: jk.janus_nar_mask([3, 5], [2, 4], 14, 5), d=16, half=BOTH),
    C("janus_nar_d64", lambda: jk.janus_nar_mask([5, 9, 3], [3, 0, 2], 20, 5), d=64),
    C("janus_nar_gqa_d128", lambda: jk.janus_nar_mask([6, 2], [4, 1], 24, 6), H=4, Hkv=2,
      d=128),
    C("janus_nar_dropout", lambda: jk.janus_nar_mask([5, 9], [3, 2], 20, 5), d=64,
      dropout=0.25),
    # --- JANUS AR: the row-major causal layout of each sample
    C("janus_ar", lambda: jk.janus_ar_mask([7, 113, 1]), _M),
    C("janus_ar_small", lambda: jk.janus_ar_mask([7, 4]), d=16),
    C("janus_ar_gqa", lambda: jk.janus_ar_mask([10, 6], 12), Hkv=1, d=64),
    # --- causal: L = 1, 7, 37, 113; rectangular (kv longer than q); (B, L, H, d) layout
    C("causal", lambda: jk.causal_mask([7, 113, 1], 113), _M, half=CPU),
    C("causal_rect", lambda: jk.causal_mask([7, 50], 60, kv_lengths=[20, 70], kv_len=80), _M),
    C("causal_37", lambda: jk.causal_mask([37, 20]), d=16, half=BOTH),
    C("causal_kv", lambda: jk.causal_mask([5, 9], kv_lengths=[12, 9]), d=16),
    # several 64-tiles: FULL tiles (no predicate), dead tiles skipped
    C("causal_113", lambda: jk.causal_mask([113], 113), H=1, d=64),
    C("causal_7_bshd", lambda: jk.causal_mask([7, 5], 7), d=64, bshd=True, scale=0.3),
    C("len1", lambda: jk.causal_mask([1], 1), H=1, d=64),
    # --- sliding window, prefix LM, key padding, full
    C("sliding_window", lambda: jk.sliding_window_mask([70, 113, 1], 9, 113), _M),
    C("sliding", lambda: jk.sliding_window_mask([37, 30], 5), d=16),
    C("sliding_window_d32", lambda: jk.sliding_window_mask([70, 40], 9, 70), H=1),
    C("prefix_lm", lambda: jk.prefix_lm_mask([3, 50, 0], [7, 113, 1], 113), _M),
    C("prefix_lm_37", lambda: jk.prefix_lm_mask([5, 10], [37, 25]), d=16),
    C("prefix_lm_dropout", lambda: jk.prefix_lm_mask([4, 0], [30, 17], 30), H=4, Hkv=1, d=64,
      dropout=0.1),
    C("key_padding", lambda: jk.key_padding_mask([3, 203, 1], q_len=20, kv_len=203), _M,
      half=CPU),
    C("key_padding_q_lengths", lambda: jk.key_padding_mask([7, 1], 9, 7, q_lengths=[9, 4]),
      d=16),
    C("key_padding_d80", lambda: jk.key_padding_mask([13, 1], 9, 16), d=80),
    C("full", lambda: jk.full_mask(2, 7, 203), _M),
    C("full_1", lambda: jk.full_mask(1, 1, 1), d=16),
    C("full_40x33", lambda: jk.full_mask(1, 40, 33), Hkv=1, d=64),
    # --- permutation (two streams; one stream)
    C("permutation", lambda: jk.permutation_mask(_perm(3, 37, 1), [37, 20, 1]), _M, half=CPU),
    C("permutation_13", lambda: jk.permutation_mask(_perm(2, 13, 7), [13, 9]), d=16,
      half=BOTH),
    C("permutation_1s", lambda: jk.permutation_mask(_perm(2, 7, 8), [7, 5], two_stream=False),
      d=16),
    C("permutation_20", lambda: jk.permutation_mask(_perm(2, 20, 3), [20, 13]), d=64),
    # --- KEY_START and DOCUMENTS (issue 14): HF padding / decode / chunked prefill, packed
    # documents, varlen, hand-built tables reaching the kernels' per-element path. One head:
    # the per-sample tables are the subject (heads and GQA ride on the other cases and on the
    # suites' GQA tests), and these 113-long masks are the slow backends' costliest cases
    *(C(name, make, H=1, half=_HF_HALF.get(name, ())) for name, make in HF_CASES.items()),
    # --- real sizes (compiled GPU kernels): long tile loops, FULL / PARTIAL / SKIP tiles,
    # the IWSLT-like JANUS NAR shape (B = 8, N up to 512), d = 256 (Triton only)
    C("causal_2048", lambda: jk.causal_mask([2048, 1777], 2048), _R, Hkv=1, d=64,
      dtype=torch.bfloat16),
    C("janus_nar_B8_N512_d128_dropout", _janus_nar_b8_n512, _R, H=4, Hkv=2, d=128,
      dropout=0.1, dtype=torch.float16),
    C("prefix_window_d256", lambda: jk.prefix_lm_mask([300, 17], [1500, 1200]), _R, Hkv=1,
      d=256, dtype=torch.bfloat16),
    C("sliding_1500_bshd", lambda: jk.sliding_window_mask([1500, 1100], 200, 1500), _R, d=64,
      bshd=True),
    C("permutation_1024", lambda: jk.permutation_mask(_perm(2, 1024, 4), [1024, 1000]), _R,
      d=64, dtype=torch.bfloat16),
    C("hf_left_pad_2048", _hf_left_pad_2048, _R, Hkv=1, d=64),
    C("documents_causal_2048", lambda: jk.document_mask(
        (torch.arange(2048) // 333)[None, :].expand(2, 2048), causal=True), _R, d=64,
      bshd=True),
]

#: every case by name
CASES: Dict[str, AttnCase] = {c.name: c for c in _TABLE}
assert len(CASES) == len(_TABLE), "case names must be unique"

# ---------------------------------------------------------------------------- backends
#: what each backend cannot take, as (test, reason); a backend of "cuda" covers both suites
LIMITS: Dict[str, Tuple[Tuple[Callable[[AttnCase], bool], str], ...]] = {
    "cpu": ((lambda c: c.d <= 256, "the CPU kernels take head_dim <= 256"),),
    "triton": ((lambda c: c.d <= 256, "the Triton kernels take head_dim <= 256"),),
    "cuda": ((lambda c: c.d % 8 == 0, "the CUDA kernels need head_dim % 8 == 0 (16-byte rows)"),
             (lambda c: c.d <= 128, "the CUDA kernels take head_dim <= 128")),
}


def why_not(case: AttnCase, backend: str) -> Optional[str]:
    """Why `backend` ("cpu", "triton", "cuda") cannot run `case`; None if it can."""
    for ok, reason in LIMITS[backend]:
        if not ok(case):
            return f"{case.name}: {reason} (d = {case.d})"
    return None


#: the size classes each kind of suite takes
SLOW_SIZES = (Size.SMALL,)                       # Triton interpreter, CUDA emulation
CPU_SIZES = (Size.SMALL, Size.MEDIUM)
GPU_SIZES = (Size.SMALL, Size.MEDIUM, Size.REAL)


def params(backend: str, sizes: Iterable[Size], *, half: bool = False,
           names: Optional[Iterable[str]] = None) -> list:
    """pytest params (id = case name) of the cases of the given size classes (or the named
    ones) for a suite of `backend`; with half=True only those whose `half` names `backend`.
    A case the backend cannot take is kept as a skipped test that gives the reason."""
    sizes = tuple(sizes)
    chosen = ([CASES[n] for n in names] if names is not None
              else [c for c in CASES.values() if c.size in sizes])
    out = []
    for c in chosen:
        if half and backend not in c.half:
            continue
        reason = why_not(c, backend)
        marks = [pytest.mark.skip(reason=reason)] if reason else []
        out.append(pytest.param(c, id=c.name, marks=marks))
    return out


def shaped(name: str, **changes) -> AttnCase:
    """A table case with some shape fields changed (a test's subject: GQA ratios, head dims)."""
    return dataclasses.replace(CASES[name], **changes)


def make_inputs(case: AttnCase, mask: MaskDescriptor, dtype: torch.dtype, seed: int = 0):
    """q, k, v, dout on the CPU for `case` over `mask` (case.bshd: (B, L, H, d) storage)."""
    g = torch.Generator().manual_seed(seed)
    B, Lq, Lk = mask.batch_size, mask.q_len, mask.kv_len

    def make(h, L):
        if case.bshd:
            return torch.randn(B, L, h, case.d, generator=g).to(dtype).transpose(1, 2)
        return torch.randn(B, h, L, case.d, generator=g).to(dtype)

    return make(case.H, Lq), make(case.kv_heads, Lk), make(case.kv_heads, Lk), make(case.H, Lq)
