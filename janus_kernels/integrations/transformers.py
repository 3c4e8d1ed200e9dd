"""``attn_implementation="janus"`` for Hugging Face transformers models.

    import janus_kernels.integrations.transformers as jk_hf
    jk_hf.register()                                   # once per process
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="janus")

``register`` adds two functions to transformers' registries (transformers stays an optional
dependency: importing ``janus_kernels`` never imports it):

* a **mask function** (``AttentionMaskInterface``): HF's 2-D padding mask, the cache offsets
  and the mask pattern (causal, sliding window, bidirectional, bidirectional sliding window,
  chunked) become a :class:`~janus_kernels.masks.MaskDescriptor` via
  :func:`janus_kernels.masks.hf_mask` -- no ``(B, L, L)`` tensor, no Python branch on tensor
  values, so ``torch.compile(fullgraph=True)`` works. Left and right padding, decoding with a
  KV cache (``Lq = 1``, sliding-window caches holding a suffix) are all descriptor fields.
  Registering the mask function is what makes padding work: with only an attention function,
  HF passes ``attention_mask=None`` and padding would be ignored.
* an **attention function** (``AttentionInterface``): runs :func:`janus_kernels.attention` on
  HF's ``(B, H, L, d)`` query and ``(B, Hkv, L, d)`` keys (grouped-query attention natively,
  no ``repeat_kv``), with ``scaling``, attention ``dropout``, Gemma-2's logit ``softcap`` and
  T5's relative position bias as kernel score modifiers.

T5's bias: transformers computes ``position_bias`` (1, H, Lq, Lk) once per stack, in the
first layer (which owns the ``relative_attention_bias`` table), with the cache offset, and
shares it with the other layers (which own no table). T5's bias is a function of the head and
``j - i`` only (``compute_bias`` buckets ``memory_position - context_position``), so its first
column and first row ARE the kernel's ``(H, Lq + Lk - 1)`` ``rel_bias`` table, exactly: we take
those two slices (autograd flows back to the embedding through HF's own gather). This is done
only for modules built on T5's recipe (``_relative_position_bucket``); a ``position_bias`` from
any other module falls back.

What the kernel cannot express falls back -- to transformers' sdpa path, or, when sdpa cannot
serve it either (``softcap``, attention sinks), to a dense eager formula -- with ONE warning
(:class:`JanusFallbackWarning`) per reason: explicit 4-D masks, custom / packed-sequence mask
functions, padding that is not one contiguous run per sample (seen on CPU in eager mode; on
GPUs and under torch.compile, where reading the mask would cost a sync, ``hf_mask``'s device
assert fails loudly instead), attention sinks (``s_aux``), ``output_attentions`` (eager, which
returns the weights), a ``position_bias`` that is not T5's. Under torch.compile the warning
is issued while tracing. ALiBi models (BLOOM, MPT) compute
attention inline, never through ``AttentionInterface``, so ``attn_implementation`` does not
reach them; :mod:`janus_kernels.score_mods` builds their table for direct kernel calls.
"""
from __future__ import annotations

import functools
import warnings
from typing import Optional, Tuple

import torch

from ..attention import attention
from .. import masks
from ..masks import MaskDescriptor
from ._hf_masks import Fallback, janus_mask

__all__ = ["register", "janus_attention_forward", "janus_mask", "JanusFallbackWarning"]


class JanusFallbackWarning(UserWarning):
    """The janus attention implementation handed a call to another implementation."""


_WARNED: set = set()
_WEIGHTS = "output_attentions=True (the kernel returns no attention weights)"


def _warn(reason: str, target: str) -> None:
    if reason in _WARNED:
        return
    _WARNED.add(reason)
    warnings.warn(f"attn_implementation='janus': {reason} cannot run on the janus kernel; "
                  f"using {target} for it (this warning is shown once)",
                  JanusFallbackWarning, stacklevel=4)


def _warn_once(reason: str, target: str) -> None:
    """One JanusFallbackWarning per reason and process. dynamo cannot trace ``warnings.warn``,
    so under torch.compile the warning is issued while the graph is traced (a ``comptime``
    callback, which reads the two locals as constants): once per compilation, not per run."""
    if torch.compiler.is_compiling():
        from torch._dynamo.comptime import comptime
        comptime(lambda ctx: _warn(ctx.get_local("reason").as_python_constant(),
                                   ctx.get_local("target").as_python_constant()))
    else:
        _warn(reason, target)


def _is_t5_style(module: torch.nn.Module) -> bool:
    return callable(getattr(type(module), "_relative_position_bucket", None)) \
        and hasattr(module, "has_relative_attention_bias")


def _t5_rel_bias(module, position_bias: torch.Tensor, query: torch.Tensor,
                 kv_len: int) -> Tuple[Optional[torch.Tensor], Optional[str]]:
    """(rel_bias, None), or (None, reason) when the bias is not T5's (see the module docs)."""
    name = type(module).__name__
    if not _is_t5_style(module):
        return None, f"position_bias from {name} (only T5-style relative biases are recognised)"
    H, Lq = query.shape[1], query.shape[2]
    if tuple(position_bias.shape) != (1, H, Lq, kv_len):
        return None, f"a {name} position_bias of shape {tuple(position_bias.shape)} " \
                     f"(expected (1, {H}, {Lq}, {kv_len}))"
    pb = position_bias[0]
    # column t serves j - i = t - (Lq - 1): rows Lq-1..1 of key 0, then row 0 of keys 0..Lk-1
    table = torch.cat([pb[:, 1:, 0].flip(-1), pb[:, 0, :]], dim=-1)
    return table.float().contiguous(), None


def _dense_fallback(module, query, key, value, mask, scaling, dropout, softcap, s_aux,
                    position_bias, is_causal):
    """Eager attention for what neither the kernel nor sdpa serves (softcap, attention sinks,
    attention weights): HF's eager formula -- scaled scores, softcap, bias, mask, sinks, fp32
    softmax, dropout; returns the weights as eager does."""
    B, H, Lq, d = query.shape
    rep = H // key.shape[1]
    key, value = key.repeat_interleave(rep, dim=1), value.repeat_interleave(rep, dim=1)
    scaling = d ** -0.5 if scaling is None else scaling
    s = torch.matmul(query, key.transpose(2, 3)) * scaling
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    if position_bias is not None:
        s = s + position_bias
    low = torch.finfo(s.dtype).min
    if mask is None and _causal(module, is_causal) and Lq > 1:
        mask = torch.ones(Lq, key.shape[2], dtype=torch.bool, device=s.device).tril()
    if mask is not None:
        s = torch.where(mask, s, low) if mask.dtype == torch.bool else s + mask[..., :key.shape[2]]
    if s_aux is not None:
        sinks = s_aux.reshape(1, -1, 1, 1).expand(B, H, Lq, 1).to(s.dtype)
        p = torch.softmax(torch.cat([s, sinks], dim=-1).float(), dim=-1)[..., :-1]
    else:
        p = torch.softmax(s.float(), dim=-1)
    p = torch.nn.functional.dropout(p.to(value.dtype), p=dropout, training=module.training)
    return torch.matmul(p, value).transpose(1, 2).contiguous(), p


def _causal(module, is_causal: Optional[bool]) -> bool:
    return bool(is_causal if is_causal is not None else getattr(module, "is_causal", True))


def janus_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                            value: torch.Tensor, attention_mask, scaling: Optional[float] = None,
                            dropout: float = 0.0, softcap: Optional[float] = None,
                            s_aux: Optional[torch.Tensor] = None,
                            position_bias: Optional[torch.Tensor] = None,
                            is_causal: Optional[bool] = None, *, backend: Optional[str] = None,
                            **kwargs) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``AttentionInterface`` entry: (B, H, Lq, d) query, (B, Hkv, Lk, d) key / value and the
    mask function's descriptor in; (B, Lq, H, d) out and no attention weights (the eager
    fallback returns them)."""
    reason, mask = None, attention_mask
    if isinstance(attention_mask, Fallback):
        reason, mask = attention_mask
    elif attention_mask is not None and not isinstance(attention_mask, MaskDescriptor):
        reason = "an explicit 4-D attention mask"
    elif s_aux is not None:
        reason = "attention sinks (s_aux)"
    elif kwargs.get("output_attentions", False):
        reason = _WEIGHTS
    rel_bias = None
    if reason is None and position_bias is not None:
        rel_bias, reason = _t5_rel_bias(module, position_bias, query, key.shape[2])
    if reason is not None:
        if isinstance(mask, MaskDescriptor):   # a reason found after the mask was built
            mask = mask.materialize()[:, None]
        if softcap is None and s_aux is None and reason != _WEIGHTS:
            from transformers.integrations.sdpa_attention import sdpa_attention_forward
            _warn_once(reason, "sdpa")
            return sdpa_attention_forward(module, query, key, value, mask, dropout=dropout,
                                          scaling=scaling, is_causal=is_causal,
                                          position_bias=position_bias, **kwargs)
        _warn_once(reason, "eager attention")
        return _dense_fallback(module, query, key, value, mask, scaling, dropout, softcap,
                               s_aux, position_bias, is_causal)
    B, _, Lq, _ = query.shape
    Lk = key.shape[2]
    if mask is None:
        # no mask from HF (the model skipped mask creation): sdpa's meaning of None -- causal
        # (upper-left, as sdpa's is_causal) for a causal module with more than one query
        mask = masks.hf_mask(torch.ones(B, Lk, dtype=torch.bool, device=query.device), Lq, Lk,
                             causal=_causal(module, is_causal) and Lq > 1, q_offset=0)
    mods = {}
    if softcap is not None:
        mods["softcap"] = float(softcap)
    if rel_bias is not None:
        mods["rel_bias"] = rel_bias
    out = attention(query, key, value, mask, scale=scaling, dropout_p=float(dropout),
                    backend=backend, **mods)
    return out.transpose(1, 2).contiguous(), None


def register(name: str = "janus", *, backend: Optional[str] = None) -> str:
    """Register ``attn_implementation=name`` with transformers (its attention and mask
    functions); ``backend`` pins a janus backend ("cpu", "cuda", "triton", "reference"),
    default: dispatch. Idempotent; returns ``name``."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    if not isinstance(name, str) or not name:
        raise ValueError(f"register: name must be a non-empty string, got {name!r}")
    if name in ("sdpa", "eager", "flex_attention") or name.startswith(("flash_attention", "paged")):
        raise ValueError(f"register: {name!r} is one of transformers' own implementations; "
                         f"pick another name")
    AttentionInterface.register(name, functools.partial(janus_attention_forward, backend=backend))
    AttentionMaskInterface.register(name, janus_mask)
    return name
