"""Mask factories with torch / Hugging Face semantics and packed sequences: ``hf_mask``,
``document_mask`` and ``varlen_mask`` (re-exported by :mod:`janus_kernels.masks`).

They use the two descriptor features made for them: ``Field.KEY_START`` (keys below it are
padding: left padding) and ``Kind.DOCUMENTS`` (packed sequences: a row sees a key only if
both carry the same document id; the ``rank`` side table holds the ``(B, q_len + kv_len)``
row then key ids, each run nondecreasing). Every descriptor integer is computed with tensor
ops from the inputs -- no Python branch on a value -- so ``hf_mask`` traces under
``torch.compile(fullgraph=True)``; values are checked where reading them is free (CPU
tensors, or GPU tensors with ``set_descriptor_checks(True)``).
"""
from __future__ import annotations

from typing import Optional, Union

import torch

from .mask_checks import describe, int_arg, values_checkable
from .mask_fields import UNBOUNDED, Kind
from .masks import MaskDescriptor, _make

__all__ = ["hf_mask", "document_mask", "varlen_mask"]

#: Stored document id of padding tokens (``document_mask``): leading padding gets the
#: smallest id, trailing padding the largest, so the stored runs stay nondecreasing; real ids
#: must lie below ``_PAD_HI``.
_PAD_LO, _PAD_HI = -UNBOUNDED, UNBOUNDED - 1


def _int_tensor(x, name: str, dims: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() != dims or x.dtype.is_floating_point \
            or x.is_complex():
        raise ValueError(f"{name}: expected a {dims}-D integer tensor, got {describe(x)}")
    return x


def _row_bounds(attention_mask: torch.Tensor, kv_len: int):
    """(KEY_START, KV_LEN) per sample from a (B, kv_len) padding mask (nonzero = real key),
    and whether each sample's real keys form one contiguous run."""
    real = attention_mask != 0
    lead = (real.long().cumsum(-1) == 0).sum(-1)                 # HF's left-padding count
    trail = (real.flip(-1).long().cumsum(-1) == 0).sum(-1)
    end = kv_len - trail
    start = torch.minimum(lead, end)                              # no real key: [0, 0)
    return start, end, real.sum(-1) == end - start


def hf_mask(attention_mask: Optional[torch.Tensor], q_len: int, kv_len: int, *,
            causal: bool = True, sliding_window: Optional[int] = None,
            chunk_size: Optional[int] = None,
            q_offset: Union[int, torch.Tensor, None] = None,
            batch_size: Optional[int] = None, device=None) -> MaskDescriptor:
    """A descriptor with torch / Hugging Face ``masking_utils`` semantics.

    Query row ``i`` sits at absolute key position ``pos(i) = q_offset + i`` (default
    ``q_offset = kv_len - q_len``: the diagonal offset of decoding with a KV cache, ``Lq = 1``,
    and of chunked prefill; a ``(B,)`` int tensor gives one offset per sample). Row ``i`` of
    sample ``b`` sees key ``j`` iff all of

    * ``attention_mask[b, j]`` is nonzero (HF ``padding_mask_function``); each sample's real
      keys must be one contiguous run ``[KEY_START, KV_LEN)`` (left or right padding), else
      ValueError (when the values can be read, see ``mask_checks.values_checkable``) or a
      ``torch._assert_async`` (GPU / ``torch.compile``);
    * ``causal=True``: ``j <= pos(i)`` (HF ``causal_mask_function``); with
      ``sliding_window=w`` also ``j > pos(i) - w`` (HF ``sliding_window_overlay``);
    * ``causal=False``: every real key (HF ``bidirectional_mask_function``); with
      ``sliding_window=w`` only ``|pos(i) - j| <= w`` (HF
      ``sliding_window_bidirectional_overlay``, inclusive);
    * ``chunk_size=c``: ``(j - L) // c == (pos(i) - L) // c`` with ``L = KEY_START`` the
      sample's left-padding count (HF ``chunked_overlay``, Llama-4: chunks start at the first
      real token; floor division). Uses the DOCUMENTS kind.

    Every row is computed (``ROWS = q_len``, no padded rows); a row that sees no key (a
    left-padding query row, say) outputs 0 where HF's eager/sdpa output is unspecified.
    HF's ``kv_offset`` (sliding caches that drop old keys) is not modelled: key ``j`` is
    absolute position ``j``. ``batch_size`` is needed only without ``attention_mask`` and
    without a tensor ``q_offset`` (default 1).
    """
    q_len, kv_len = int_arg(q_len, "q_len"), int_arg(kv_len, "kv_len")
    if not isinstance(causal, bool):
        raise TypeError(f"causal: expected a bool, got {causal!r}")
    w = None if sliding_window is None else int_arg(sliding_window, "sliding_window", minimum=1)
    c = None if chunk_size is None else int_arg(chunk_size, "chunk_size", minimum=1)
    if attention_mask is not None:
        am = attention_mask
        if not isinstance(am, torch.Tensor) or am.dim() != 2 or am.shape[1] != kv_len \
                or am.dtype.is_floating_point or am.is_complex():
            raise ValueError(f"attention_mask: expected a bool or integer (B, kv_len={kv_len}) "
                             f"tensor (1 = real key), got {describe(am)}")
        B, dev = am.shape[0], am.device
        start, end, contiguous = _row_bounds(am, kv_len)
        msg = ("attention_mask: the real keys (nonzero entries) of each sample must be one "
               "contiguous run (left or right padding)")
        if values_checkable(am):
            if not bool(contiguous.all()):
                raise ValueError(f"{msg}; samples {(~contiguous).nonzero().flatten().tolist()} "
                                 f"are not")
        elif am.numel():
            torch._assert_async(contiguous.all(), msg)
    else:
        dev = device if not isinstance(q_offset, torch.Tensor) else q_offset.device
        B = q_offset.shape[0] if isinstance(q_offset, torch.Tensor) and q_offset.dim() == 1 \
            else int_arg(1 if batch_size is None else batch_size, "batch_size", maximum=1 << 62)
        start = torch.zeros(B, dtype=torch.long, device=dev)
        end = torch.full((B,), kv_len, dtype=torch.long, device=dev)
    if q_offset is None:
        off = torch.full((B,), kv_len - q_len, dtype=torch.long, device=dev)
    elif isinstance(q_offset, torch.Tensor):
        off = _int_tensor(q_offset, "q_offset", 1)
        if off.shape[0] != B:
            raise ValueError(f"q_offset: expected {B} per-sample offsets, got {off.shape[0]}")
        off = off.to(device=dev, dtype=torch.long)
    else:
        off = torch.full((B,), int_arg(q_offset, "q_offset", minimum=-UNBOUNDED), dtype=torch.long,
                         device=dev)
    if causal:    # window [pos + 1 - w, pos + 1)
        cols = dict(OFF0=off + 1, WIDTH0=UNBOUNDED if w is None else w)
    elif w is not None:   # |pos - j| <= w: window [pos - w, pos + w + 1)
        cols = dict(OFF0=off + w + 1, WIDTH0=2 * w + 1)
    else:          # every real key: hi = max(r, kv_len) >= kv_len
        cols = dict(OFF0=0, HMIN0=kv_len, WIDTH0=UNBOUNDED)
    kind, docs = Kind.WINDOW, None
    if c is not None:
        rows = torch.arange(q_len, device=dev)[None, :] + off[:, None]
        keys = torch.arange(kv_len, device=dev)[None, :].expand(B, kv_len)
        docs = torch.cat([torch.div(rows - start[:, None], c, rounding_mode="floor"),
                          torch.div(keys - start[:, None], c, rounding_mode="floor")], 1)
        kind, docs = Kind.DOCUMENTS, docs.to(torch.int32).contiguous()
    fam = "hf_" + ("causal" if causal else "bidirectional") + \
        ("_sliding" if w is not None else "") + ("_chunked" if c is not None else "")
    return _make(B, dev, q_len, kv_len, q_len, fam, kind, docs, KV_LEN=end, KEY_START=start,
                 ROWS0=q_len, **cols)


def _stored_docs(x: torch.Tensor, name: str) -> tuple:
    """Padding-aware stored ids of one (B, L) run: negative ids are padding, allowed only
    before the first or after the last real token (leading ones stored as _PAD_LO, trailing
    ones as _PAD_HI); returns (stored ids, first real index, end of the real tokens)."""
    real = x >= 0
    seen = real.long().cummax(-1).values.bool() if x.shape[1] else real
    later = real.flip(-1).long().cummax(-1).values.flip(-1).bool() if x.shape[1] else real
    stored = torch.where(real, x.long(), torch.where(seen, _PAD_HI, _PAD_LO))
    if values_checkable(x) and x.numel():
        hole = ~real & seen & later
        if bool(hole.any()):
            b, c = (int(v) for v in hole.nonzero()[0])
            raise ValueError(f"{name}[{b}, {c}] = {int(x[b, c])}: a padding id (negative) between "
                             f"real tokens; padding must come before or after them")
        big = real & (x.long() >= _PAD_HI)
        if bool(big.any()):
            b, c = (int(v) for v in big.nonzero()[0])
            raise ValueError(f"{name}[{b}, {c}] = {int(x[b, c])}: document ids must be < 2^30 - 1")
        down = stored[:, 1:] < stored[:, :-1]
        if bool(down.any()):
            b, c = (int(v) for v in down.nonzero()[0])
            raise ValueError(f"{name}[{b}, {c + 1}] = {int(x[b, c + 1])} < {name}[{b}, {c}] = "
                             f"{int(x[b, c])}: document ids must be nondecreasing along each row "
                             f"(documents packed one after the other)")
    lead = (~seen).sum(-1)
    end = x.shape[1] - (~later).sum(-1)
    return stored, torch.minimum(lead, end), end


def document_mask(q_docs: torch.Tensor, k_docs: Optional[torch.Tensor] = None, *,
                  causal: bool = False, sliding_window: Optional[int] = None) -> MaskDescriptor:
    """Packed sequences from per-token document ids: row ``i`` of sample ``b`` sees key ``j``
    only if ``q_docs[b, i] == k_docs[b, j]`` (block-diagonal attention).

    ``q_docs`` (B, Lq) and ``k_docs`` (B, Lk, default ``q_docs``) are integer tensors whose ids
    (in ``[0, 2^30 - 1)``) are nondecreasing along each row. A negative id marks a padding
    token, allowed only before the first or after the last real token: padding keys are never
    attended and padding rows see nothing (their output is 0). ``causal=True`` (needs
    ``Lq == Lk``) adds ``j <= i`` in the packed index, and ``sliding_window=w`` adds
    ``j > i - w`` (causal) or ``|i - j| <= w`` (bidirectional, HF's convention).
    """
    q_docs = _int_tensor(q_docs, "q_docs", 2)
    k_docs = q_docs if k_docs is None else _int_tensor(k_docs, "k_docs", 2)
    if not isinstance(causal, bool):
        raise TypeError(f"causal: expected a bool, got {causal!r}")
    if k_docs.shape[0] != q_docs.shape[0] or k_docs.device != q_docs.device:
        raise ValueError(f"k_docs: expected {q_docs.shape[0]} samples on {q_docs.device}, got "
                         f"{describe(k_docs)}")
    B, q_len = q_docs.shape
    kv_len = int_arg(k_docs.shape[1], "k_docs.shape[1]")
    q_len = int_arg(q_len, "q_docs.shape[1]")
    w = None if sliding_window is None else int_arg(sliding_window, "sliding_window", minimum=1)
    if (causal or w is not None) and q_len != kv_len:
        raise ValueError(f"document_mask: causal / sliding_window compare packed indices and "
                         f"need Lq == Lk, got q_docs {tuple(q_docs.shape)} and k_docs "
                         f"{tuple(k_docs.shape)}")
    qs, _, _ = _stored_docs(q_docs, "q_docs")
    ks, start, end = _stored_docs(k_docs, "k_docs")
    if causal:
        cols = dict(OFF0=1, WIDTH0=UNBOUNDED if w is None else w)
    elif w is not None:
        cols = dict(OFF0=w + 1, WIDTH0=2 * w + 1)
    else:
        cols = dict(OFF0=0, HMIN0=kv_len, WIDTH0=UNBOUNDED)
    docs = torch.cat([qs, ks], 1).to(torch.int32).contiguous()
    fam = "documents_" + ("causal" if causal else "bidirectional")
    return _make(B, q_docs.device, q_len, kv_len, q_len, fam, Kind.DOCUMENTS, docs,
                 KV_LEN=end, KEY_START=start, ROWS0=q_len, **cols)


def _cu_docs(cu: torch.Tensor, name: str) -> torch.Tensor:
    """Per-token document index (1, total) from FlashAttention's cumulative lengths."""
    cu = _int_tensor(cu, name, 1)
    if cu.numel() == 0 or int(cu[0]) != 0 or bool((cu[1:] < cu[:-1]).any()):
        raise ValueError(f"{name}: expected cumulative sequence lengths (0 first, "
                         f"nondecreasing), got {cu.tolist()}")
    total = int_arg(int(cu[-1]), f"{name}[-1] (the total length)")
    pos = torch.arange(total, device=cu.device)
    return torch.searchsorted(cu[1:].long(), pos, right=True)[None, :]


def varlen_mask(cu_seqlens_q: torch.Tensor, cu_seqlens_k: Optional[torch.Tensor] = None, *,
                causal: bool = False) -> MaskDescriptor:
    """FlashAttention's varlen form: one packed sample (B = 1) whose sequences are given by
    cumulative lengths (``cu_seqlens_q[s]`` is the first token of sequence ``s``, the last
    entry the total length; ``cu_seqlens_k`` defaults to ``cu_seqlens_q``). Query tokens of
    sequence ``s`` see the key tokens of sequence ``s`` (all of them, or with ``causal`` those
    at or before their own packed index, which needs ``cu_seqlens_k == cu_seqlens_q``: the
    per-sequence bottom-right alignment of differing lengths is not expressible). Reads the
    lengths (one host sync for GPU tensors, as the total length is a shape).
    """
    q_docs = _cu_docs(cu_seqlens_q, "cu_seqlens_q")
    if cu_seqlens_k is None:
        return document_mask(q_docs, causal=causal)
    k_docs = _cu_docs(cu_seqlens_k, "cu_seqlens_k")
    if causal and not torch.equal(cu_seqlens_k.long(), cu_seqlens_q.long()):
        raise ValueError("varlen_mask: causal=True needs cu_seqlens_k == cu_seqlens_q "
                         "(per-sequence bottom-right alignment is not expressible)")
    return document_mask(q_docs, k_docs, causal=causal)
