"""The Hugging Face mask function of ``attn_implementation="janus"``: HF's mask request (the
2-D padding mask, the query / key offsets and the pattern it encodes in ``mask_function``)
becomes a :class:`~janus_kernels.masks.MaskDescriptor` built with tensor ops -- never a
``(B, Lq, Lk)`` tensor, never a Python branch on tensor values.

HF (``transformers.masking_utils``) describes the pattern as a callable ``mask_function(b, h,
q_idx, kv_idx)``; the creators combine a few fixed pieces (``causal_mask_function``,
``bidirectional_mask_function`` and, through ``and_masks``, a sliding-window or chunk
overlay). We recognise exactly those combinations; anything else (user ``or_mask_function``
/ ``and_mask_function``, packed-sequence remapping, block-wise overlays) is a ``Fallback``:
HF's own sdpa mask plus the reason, which the attention function reports once.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Optional, Union

import torch
from transformers import masking_utils as mu

from .. import masks
from ..mask_checks import values_checkable

# Code objects of HF's combinators: recognising a closure by its code works while dynamo
# traces (reading ``__closure__`` does not), so the structure test below needs no tracing.
_AND_CODE = mu.and_masks(mu.causal_mask_function).__code__
_SLIDING_CODE = mu.sliding_window_overlay(1).__code__
_SLIDING_BIDIR_CODE = mu.sliding_window_bidirectional_overlay(1).__code__
_CHUNK_CODE = mu.chunked_overlay(1, torch.zeros(1, dtype=torch.long)).__code__


@dataclasses.dataclass(frozen=True)
class Pattern:
    """A mask pattern the kernel expresses: causal (``j <= pos(i)``) or bidirectional, with an
    optional window (causal: ``j > pos(i) - window``; bidirectional: ``|pos(i) - j| <=
    window``) or chunk size (causal: ``(j - lp) // c == (pos(i) - lp) // c``, lp = the
    sample's left padding, as HF's ``chunked_overlay``)."""

    causal: bool
    window: Optional[int] = None
    chunk: Optional[int] = None


class Fallback(NamedTuple):
    """What the mask function returns when the kernel cannot express the request: HF's sdpa
    mask (a 4-D bool tensor) and the reason, for the attention function's single warning."""

    reason: str
    mask: Optional[torch.Tensor]

    @property
    def ndim(self) -> int:      # a prepared mask to transformers (see HFMaskDescriptor)
        return 4


@dataclasses.dataclass(frozen=True)
class HFMaskDescriptor(masks.MaskDescriptor):
    """A MaskDescriptor that transformers takes for a prepared mask (``ndim`` 4, ``shape``
    (B, 1, Lq, Lk)): ``generate()`` with a static cache builds the masks ahead of the forward
    (``create_masks_for_generate``) and passes them back in as ``attention_mask``; the mask
    function then returns them unchanged (a 2-D mask would have ``ndim`` 2)."""

    @property
    def ndim(self) -> int:
        return 4

    @property
    def shape(self) -> tuple:
        return (self.batch_size, 1, self.q_len, self.kv_len)


def _for_hf(desc: masks.MaskDescriptor) -> HFMaskDescriptor:
    return HFMaskDescriptor(**{f.name: getattr(desc, f.name) for f in dataclasses.fields(desc)})


def _cells(fn: Callable) -> dict:
    return dict(zip(fn.__code__.co_freevars, (c.cell_contents for c in fn.__closure__ or ())))


def _overlay_pattern(mask_function: Callable) -> Union[Pattern, str]:
    """Eager mode: read HF's ``and_masks(overlay, base)`` closure and return the exact pattern."""
    parts = _cells(mask_function).get("mask_functions", ())
    if len(parts) == 2 and getattr(parts[0], "__code__", None) is not None:
        overlay, base = parts
        code, cells = overlay.__code__, _cells(overlay) if overlay.__closure__ else {}
        if code is _SLIDING_CODE and base is mu.causal_mask_function:
            return Pattern(True, window=int(cells["sliding_window"]))
        if code is _CHUNK_CODE and base is mu.causal_mask_function:
            return Pattern(True, chunk=int(cells["chunk_size"]))
        if code is _SLIDING_BIDIR_CODE and base is mu.bidirectional_mask_function:
            return Pattern(False, window=int(cells["sliding_window"]))
    return "a combined mask_function other than HF's sliding-window / chunked patterns " \
           "(packed sequences, block-wise or custom overlays)"


def _config_pattern(local_size: int, bidirectional: bool, config, attention_mask) -> Union[Pattern, str]:
    """Under torch.compile closures cannot be read: the creator's ``local_size`` and the config
    name the pattern. HF adds a packed-sequence mask (which we cannot see) only when there is
    no 2-D attention mask, so that case falls back."""
    if attention_mask is None:
        return "a sliding-window / chunked mask without a 2-D attention_mask under " \
               "torch.compile (HF may have added a packed-sequence mask that cannot be inspected)"
    if bidirectional:
        return Pattern(False, window=local_size)
    chunk = getattr(config, "attention_chunk_size", None)
    window = getattr(config, "sliding_window", None)
    if chunk == local_size and window != local_size:
        return Pattern(True, chunk=local_size)
    if window == local_size and chunk != local_size:
        return Pattern(True, window=local_size)
    return f"a local mask of size {local_size} that the config names neither sliding_window " \
           f"nor attention_chunk_size unambiguously"


def mask_pattern(mask_function: Callable, attention_mask: Optional[torch.Tensor],
                 kwargs: dict) -> Union[Pattern, str]:
    """The pattern HF asks for, or the reason it is not one the kernel expresses. The
    bidirectional creators are the only ones passing ``allow_is_bidirectional_skip``; the
    sliding / chunked ones pass ``local_size``; user mask functions set ``use_vmap``."""
    if kwargs.get("use_vmap", False):
        return "a custom or_mask_function / and_mask_function"
    bidirectional = "allow_is_bidirectional_skip" in kwargs
    local_size = kwargs.get("local_size")
    if local_size is None:
        if mask_function is mu.causal_mask_function and not bidirectional:
            return Pattern(True)
        if mask_function is mu.bidirectional_mask_function and bidirectional:
            return Pattern(False)
        return f"mask_function {getattr(mask_function, '__qualname__', mask_function)!s} " \
               f"(packed sequences, block-wise or custom overlays)"
    if mask_function.__code__ is not _AND_CODE:
        return f"mask_function {getattr(mask_function, '__qualname__', mask_function)!s}"
    if torch.compiler.is_compiling():
        return _config_pattern(int(local_size), bidirectional, kwargs.get("config"), attention_mask)
    return _overlay_pattern(mask_function)


def _runs(padding: torch.Tensor) -> torch.Tensor:
    """Number of runs of real keys per sample (the kernel needs at most one)."""
    starts = padding[:, 1:] & ~padding[:, :-1]
    return starts.sum(-1) + padding[:, 0].long()


def build_descriptor(pattern: Pattern, batch_size: int, q_length: int, kv_length: int,
                     q_offset, kv_offset: int, attention_mask: Optional[torch.Tensor],
                     device) -> Union[masks.MaskDescriptor, str]:
    """The descriptor of ``pattern`` in HF's coordinates: query row i sits at absolute position
    ``q_offset + i``, key j at ``kv_offset + j`` (a sliding cache keeps a suffix), and the 2-D
    mask covers absolute positions (zero-padded to ``kv_offset + kv_length`` as HF does)."""
    if attention_mask is None:
        local = torch.ones(batch_size, kv_length, dtype=torch.bool, device=device)
    else:
        local = mu.prepare_padding_mask(attention_mask.to(device=device, dtype=torch.bool),
                                        kv_length, kv_offset)
        local = local[:, kv_offset:kv_offset + kv_length]
        # read where that is free (CPU, not tracing); elsewhere hf_mask asserts on the device
        # (an error, never a silent wrong answer) rather than syncing on every forward
        if values_checkable(local) and kv_length > 0 and bool((_runs(local) > 1).any()):
            return "a 2-D attention_mask whose real tokens are not one contiguous run " \
                   "(padding in the middle)"
    # position of query row i in local key coordinates: a Python int or a (B,) tensor
    pos0 = q_offset - kv_offset
    if isinstance(pos0, torch.Tensor):
        pos0 = pos0.to(device=device, dtype=torch.long).reshape(-1).expand(batch_size)
    desc = masks.hf_mask(local, q_length, kv_length, causal=pattern.causal,
                         sliding_window=pattern.window, q_offset=pos0)
    if pattern.chunk is None:
        return desc
    return _chunked(desc, pattern.chunk, attention_mask, batch_size, q_length, kv_length,
                    q_offset, kv_offset, device)


def _chunked(desc: masks.MaskDescriptor, chunk: int, attention_mask, batch_size: int,
             q_length: int, kv_length: int, q_offset, kv_offset: int, device):
    """Chunked attention (Llama-4): the causal descriptor AND "same chunk", the chunks counted
    from each sample's first real token as HF's ``create_chunked_causal_mask`` does -- the
    document kind with chunk numbers as document ids (shifted per sample to be >= 0)."""
    if attention_mask is None:
        lp = torch.zeros(batch_size, dtype=torch.long, device=device)
    else:
        am = attention_mask.to(device)
        lp = (am.cumsum(dim=-1) == torch.zeros_like(am)).sum(dim=-1)
    shift = (lp + chunk - 1) // chunk * chunk - lp          # >= 0, keeps ids >= 0
    qpos = torch.arange(q_length, device=device) + q_offset
    qpos = qpos.reshape(1, -1) if qpos.dim() == 1 else qpos
    kpos = torch.arange(kv_length, device=device) + kv_offset
    q_doc = (qpos + shift[:, None]) // chunk
    k_doc = (kpos[None, :] + shift[:, None]) // chunk
    rank = torch.cat([q_doc.expand(batch_size, q_length), k_doc], dim=1).to(torch.int32)
    return dataclasses.replace(desc, kind=masks.Kind.DOCUMENTS, rank=rank, family="hf_chunked")


def janus_mask(batch_size: int, q_length: int, kv_length: int, q_offset=0, kv_offset: int = 0,
               mask_function: Callable = mu.causal_mask_function,
               attention_mask: Optional[torch.Tensor] = None, device=None,
               **kwargs) -> Union[HFMaskDescriptor, Fallback]:
    """``AttentionMaskInterface`` entry: a MaskDescriptor, or a :class:`Fallback` carrying HF's
    sdpa mask and the reason the kernel cannot serve it."""
    if isinstance(attention_mask, (HFMaskDescriptor, Fallback)):
        return attention_mask           # built ahead by generate() (static cache), passed back
    device = torch.device("cpu") if device is None else torch.device(device)
    pattern = mask_pattern(mask_function, attention_mask, kwargs)
    if isinstance(pattern, Pattern):
        desc = build_descriptor(pattern, batch_size, q_length, kv_length, q_offset, kv_offset,
                                attention_mask, device)
        if not isinstance(desc, str):
            return _for_hf(desc)
        pattern = desc
    sdpa_kwargs = {k: v for k, v in kwargs.items()
                   if k not in ("allow_is_causal_skip", "allow_is_bidirectional_skip")}
    dense = mu.sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length,
                         q_offset=q_offset, kv_offset=kv_offset, mask_function=mask_function,
                         attention_mask=attention_mask, device=device,
                         allow_is_causal_skip=False, allow_is_bidirectional_skip=False,
                         **sdpa_kwargs)
    return Fallback(pattern, dense)
