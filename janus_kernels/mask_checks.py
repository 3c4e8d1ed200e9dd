"""The descriptor contract: which ``MaskDescriptor`` values every backend accepts, and the
checks that enforce it with an error naming the field and the sample.

Per sample ``b`` (``L = 2**30 = UNBOUNDED``)::

    0 <= KV_LEN <= kv_len          0 <= PREFIX <= kv_len
    0 <= ROWS0 <= q_split          0 <= ROWS1 <= q_len - q_split
    -L <= OFF[s], HMIN[s] <= L     0 <= WIDTH[s] <= L
    0 <= KEY_START <= KV_LEN
    permutation kind: ROWS[s] <= kv_len (rank is read at the row index) and every rank entry
    read (index < max(KV_LEN, ROWS0, ROWS1)) in [-L, L)
    documents kind: rank is (B, q_len + kv_len), row docs then key docs, each run
    nondecreasing, every entry in [-L, L)

and ``0 <= q_split <= q_len <= L``, ``kv_len <= L``. Within these bounds no intermediate of
the predicate (``r + OFF``, ``hi - WIDTH``, ``j + WIDTH``, ``rank + OFF``) leaves int32, and
every index a kernel derives stays inside its tensors. Larger OFF/HMIN/WIDTH values would
not express anything new: a window end beyond ``[-kv_len, kv_len + q_len]`` means the same
as one at the bound.

When the values are read: tables on the CPU are checked in O(B) on every construction and
every ``attention`` call. Tables on a GPU are not read (that would be a host sync on the hot
path; the kernels clamp every index instead) unless checking is switched on with
``JANUS_CHECK_DESCRIPTORS=1`` or :func:`set_descriptor_checks`, which syncs and names the
bad sample. Nothing is read while ``torch.compile`` traces.
"""
from __future__ import annotations

import operator
import os
from typing import List, Optional, Tuple

import numpy as np
import torch

from .mask_fields import NUM_FIELDS, UNBOUNDED, Field, Kind

__all__ = ["set_descriptor_checks", "descriptor_checks_enabled", "values_checkable",
           "int_arg", "check_table", "check_rank", "check_documents", "rank_read_extent",
           "side_table_width", "LIMIT"]

#: Bound on sizes and window integers (see the module docstring).
LIMIT = UNBOUNDED
_INT32 = (-(1 << 31), (1 << 31) - 1)

_override: Optional[bool] = None


def set_descriptor_checks(enabled: Optional[bool]) -> None:
    """Force value checks of GPU descriptors on (True: every construction and attention call
    syncs and reports the bad sample) or off (False); None defers to the
    ``JANUS_CHECK_DESCRIPTORS`` environment variable. CPU descriptors are always checked."""
    global _override
    if enabled is not None and not isinstance(enabled, bool):
        raise TypeError(f"set_descriptor_checks: expected True, False or None, got {enabled!r}")
    _override = enabled


def descriptor_checks_enabled() -> bool:
    """Whether GPU descriptors are value-checked (see :func:`set_descriptor_checks`)."""
    if _override is not None:
        return _override
    return os.environ.get("JANUS_CHECK_DESCRIPTORS", "").strip() not in ("", "0")


def values_checkable(t: torch.Tensor) -> bool:
    """Whether the values of ``t`` may be read now: never while torch.compile traces (fake
    tensors) or for meta tensors; always on the CPU (free); elsewhere only in checking mode."""
    if torch.compiler.is_compiling() or t.device.type == "meta" or _is_fake(t):
        return False
    return t.device.type == "cpu" or descriptor_checks_enabled()


def _is_cpu(t: torch.Tensor) -> bool:
    return t.device.type == "cpu"


_FAKE_TENSOR = None


def _is_fake(t: torch.Tensor) -> bool:
    global _FAKE_TENSOR
    if _FAKE_TENSOR is None:   # imported once: an import statement per call cost ~30 us cold
        from torch._subclasses.fake_tensor import FakeTensor
        _FAKE_TENSOR = FakeTensor
    return isinstance(t, _FAKE_TENSOR)


def int_arg(x, name: str, minimum: int = 0, maximum: int = LIMIT):
    """``x`` as a Python int in ``[minimum, maximum]``; bools, floats (even 2.0) and other
    non-integers raise instead of being truncated. Symbolic sizes (torch.compile) pass."""
    if isinstance(x, torch.SymInt):
        return x
    if isinstance(x, bool) or (isinstance(x, torch.Tensor) and x.dtype == torch.bool):
        raise TypeError(f"{name}: expected an integer, got the bool {x!r}")
    try:
        v = operator.index(x)
    except TypeError:
        raise TypeError(f"{name}: expected an integer, got {x!r} ({type(x).__name__})") from None
    if not minimum <= v <= maximum:
        raise ValueError(f"{name}: expected an integer in [{minimum}, {maximum}], got {v}")
    return v


def _bounds(q_len: int, kv_len: int, q_split: int, kind: int) -> Tuple[List[int], List[int]]:
    """Per-field [lo, hi], in Field order (plain lists: this runs on every attention call)."""
    rows0, rows1 = q_split, q_len - q_split
    if kind == Kind.PERMUTATION:            # the rank is read at the row index too
        rows0, rows1 = min(rows0, kv_len), min(rows1, kv_len)
    L = LIMIT
    #      KV_LEN  PREFIX  ROWS0  OFF0 HMIN0 WIDTH0 ROWS1  OFF1 HMIN1 WIDTH1 KEY_START
    lo = [0,      0,      0,     -L,  -L,   0,     0,     -L,  -L,   0,     0]
    hi = [kv_len, kv_len, rows0, L,   L,    L,     rows1, L,   L,    L,     kv_len]
    return lo, hi


def _reason(f: Field, q_len: int, kv_len: int, q_split: int, kind: int) -> str:
    rank = f" and the kv_len={kv_len} rank entries" if kind == Kind.PERMUTATION else ""
    return {
        Field.KV_LEN: f"the real keys must fit the kv_len={kv_len} padded keys",
        Field.PREFIX: f"a prefix of the kv_len={kv_len} keys",
        Field.ROWS0: f"the real rows must fit the q_split={q_split} rows of stream 0{rank}",
        Field.ROWS1: f"the real rows must fit the q_len - q_split={q_len - q_split} rows "
                     f"of stream 1{rank}",
        Field.KEY_START: f"the first real key must lie in the kv_len={kv_len} padded keys",
    }.get(f, "0 <= WIDTH <= 2^30 (2^30 = UNBOUNDED: no lower window end)"
          if f in (Field.WIDTH0, Field.WIDTH1)
          else "|value| <= 2^30 so that r + OFF and hi - WIDTH stay in int32")


def check_table(table: torch.Tensor, q_len: int, kv_len: int, q_split: int, kind: int,
                what: str = "MaskDescriptor.params") -> None:
    """Raise ValueError naming the first out-of-contract entry of the (B, NUM_FIELDS) integer
    table (int32, or the int64 table a factory builds before the cast: values outside int32
    are caught here instead of wrapping). Reads the values: call only if values_checkable."""
    if table.numel() == 0:
        return
    lo, hi = _bounds(q_len, kv_len, q_split, kind)
    if _is_cpu(table):                             # numpy: ~1 us per op against ~5 for torch
        p = table.numpy()
        bad = (p < np.asarray(lo)) | (p > np.asarray(hi))
        if not bad.any():
            if (p[:, Field.KEY_START] > p[:, Field.KV_LEN]).any():
                _check_key_start(table, what)
            return
        b, f = (int(x) for x in np.argwhere(bad)[0])
    else:                                          # opt-in checking mode: syncs
        p = table.long()
        bad = (p < p.new_tensor(lo)) | (p > p.new_tensor(hi))
        if not bool(bad.any()):
            _check_key_start(table, what)
            return
        b, f = (int(x) for x in bad.nonzero()[0])
    v, name = int(table[b, f]), Field(f).name
    raise ValueError(f"{what}[{b}, Field.{name}] = {v} (sample {b}): expected {lo[f]} <= "
                     f"{name} <= {hi[f]}: {_reason(Field(f), q_len, kv_len, q_split, kind)}")


def _check_key_start(table: torch.Tensor, what: str) -> None:
    """The one cross-field rule: the real keys [KEY_START, KV_LEN) are a (maybe empty) run."""
    t = table.long()
    bad = t[:, Field.KEY_START] > t[:, Field.KV_LEN]
    if bool(bad.any()):
        b = int(bad.nonzero()[0])
        raise ValueError(f"{what}[{b}, Field.KEY_START] = {int(t[b, Field.KEY_START])} "
                         f"(sample {b}): expected KEY_START <= KV_LEN = "
                         f"{int(t[b, Field.KV_LEN])} (the real keys are [KEY_START, KV_LEN))")


def rank_read_extent(table: torch.Tensor) -> torch.Tensor:
    """Per sample, how many leading rank entries the kernels read: keys j < KV_LEN and rows
    r < ROWS[s] (the rank is indexed by the local row too)."""
    t = table.long()
    return torch.stack([t[:, Field.KV_LEN], t[:, Field.ROWS0], t[:, Field.ROWS1]], 1).amax(1)


def check_rank(rank: torch.Tensor, read: torch.Tensor, what: str = "MaskDescriptor.rank"
               ) -> None:
    """Raise ValueError if a rank entry the kernels read (index < ``read[b]``, see
    rank_read_extent) lies outside [-2^30, 2^30), where rank + OFF could leave int32."""
    if rank.numel() == 0:
        return
    pos = torch.arange(rank.shape[1], device=rank.device)
    r = rank.long()
    bad = (pos[None, :] < read[:, None]) & ((r < -LIMIT) | (r >= LIMIT))
    if bool(bad.any()):
        b, j = (int(x) for x in bad.nonzero()[0])
        raise ValueError(f"{what}[{b}, {j}] = {int(r[b, j])} (sample {b}): expected ranks in "
                         f"[-2^30, 2^30) so that rank + OFF stays in int32")


def check_documents(docs: torch.Tensor, q_len: int, what: str = "MaskDescriptor.rank") -> None:
    """Raise ValueError unless the DOCUMENTS side table (B, q_len + kv_len) holds, per sample,
    a nondecreasing run of row documents (columns [0, q_len)) and one of key documents
    (columns [q_len, ...)), every id in [-2^30, 2^30). Monotone runs are what make a row's
    keys one contiguous run (found by binary search in the kernels) and the tile classes
    exact-or-conservative from the corner documents."""
    if docs.numel() == 0:
        return
    d = docs.long()
    out = (d < -LIMIT) | (d >= LIMIT)
    if bool(out.any()):
        b, c = (int(x) for x in out.nonzero()[0])
        raise ValueError(f"{what}[{b}, {c}] = {int(d[b, c])} (sample {b}): expected document "
                         f"ids in [-2^30, 2^30)")
    step = d[:, 1:] < d[:, :-1]
    step[:, q_len - 1:q_len] = False               # the row run ends, the key run starts
    if bool(step.any()):
        b, c = (int(x) for x in step.nonzero()[0])
        part, col = ("row", c + 1) if c + 1 < q_len else ("key", c + 1 - q_len)
        raise ValueError(f"{what}[{b}, {c + 1}] = {int(d[b, c + 1])} (sample {b}, {part} "
                         f"{col}) is smaller than the entry before it ({int(d[b, c])}): the "
                         f"row documents (columns [0, q_len={q_len})) and the key documents "
                         f"(the rest) must each be nondecreasing")


def side_table_width(kind: int, q_len: int, kv_len: int) -> int:
    """Columns of the ``rank`` side table a kind reads (0: none)."""
    return {Kind.PERMUTATION: kv_len, Kind.DOCUMENTS: q_len + kv_len}.get(kind, 0)


def check_structure(params, rank, q_len, kv_len, q_split, kind) -> Tuple[int, int, int, Kind]:
    """Types, dtypes, shapes and devices of a descriptor (no values read); returns the
    normalized (q_len, kv_len, q_split, kind)."""
    if not isinstance(params, torch.Tensor) or params.dtype != torch.int32 \
            or params.dim() != 2 or params.shape[1] != NUM_FIELDS:
        raise ValueError(f"MaskDescriptor.params: expected an int32 tensor of shape "
                         f"(B, {NUM_FIELDS}), got {describe(params)}")
    q_len = int_arg(q_len, "MaskDescriptor.q_len")
    kv_len = int_arg(kv_len, "MaskDescriptor.kv_len")
    q_split = int_arg(q_split, "MaskDescriptor.q_split")
    if not q_split <= q_len:
        raise ValueError(f"MaskDescriptor.q_split: expected 0 <= q_split <= q_len={q_len}, "
                         f"got {q_split}")
    if isinstance(kind, bool) or not isinstance(kind, int) or kind not in set(Kind):
        raise ValueError(f"MaskDescriptor.kind: expected one of "
                         f"{[f'{k.name}={int(k)}' for k in Kind]}, got {kind!r}")
    kind = Kind(kind)
    width = side_table_width(kind, q_len, kv_len)
    if kind != Kind.WINDOW:
        if not isinstance(rank, torch.Tensor) or rank.dtype != torch.int32 \
                or tuple(rank.shape) != (params.shape[0], width) or rank.device != params.device:
            what = "kv_len" if kind == Kind.PERMUTATION else "q_len + kv_len"
            raise ValueError(f"MaskDescriptor.rank: the {kind.name} kind needs int32 "
                             f"({params.shape[0]}, {width}) (B, {what}) on {params.device}, "
                             f"got {describe(rank)}")
    elif rank is not None:
        raise ValueError(f"MaskDescriptor.rank: only the PERMUTATION and DOCUMENTS kinds read "
                         f"a rank table; got {describe(rank)} for kind {kind.name}")
    return q_len, kv_len, q_split, kind


def describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor(dtype={x.dtype}, shape={tuple(x.shape)}, device={x.device})"
    return type(x).__name__
