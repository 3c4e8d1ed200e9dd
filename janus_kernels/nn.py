"""nn modules on top of `janus_kernels.attention`.

* :class:`MultiheadAttention` — a drop-in for ``torch.nn.MultiheadAttention`` (it *is* one: same
  constructor, parameters, state_dict and forward signature). Masks that match a structured
  family (key padding, causal, both) run through the fused kernel as descriptors; any other
  dense ``attn_mask`` (and ``need_weights=True``, ``add_bias_kv``, ``add_zero_attn``) falls
  back to torch's own implementation, so results are always correct. Extra keyword
  ``mask=`` takes a :class:`~janus_kernels.masks.MaskDescriptor` directly.
* :class:`TwoStreamSelfAttention` — the JANUS decoder self-attention: content and query
  streams share the projections; one attention call covers ``[content rows ; query rows]``
  against content keys under a two-stream descriptor (``janus_nar_mask`` / ``janus_ar_mask``).

Replacing attention in an existing model::

    layer = nn.TransformerEncoderLayer(512, 8, batch_first=True)
    fused = janus_kernels.nn.MultiheadAttention(512, 8, batch_first=True)
    fused.load_state_dict(layer.self_attn.state_dict())
    layer.self_attn = fused
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import attention
from .masks import MaskDescriptor, UNBOUNDED, _build

__all__ = ["MultiheadAttention", "TwoStreamSelfAttention", "descriptor_from_dense"]


def _as_blocked(mask: Tensor) -> Tensor:
    """torch's mask conventions -> bool 'blocked' (True = may NOT attend)."""
    if mask.dtype == torch.bool:
        return mask
    return torch.isneginf(mask) if mask.is_floating_point() else mask.bool()


def _suffix_lengths(blocked: Tensor) -> Optional[Tensor]:
    """If every row of the (B, S) key mask blocks exactly a suffix, the kept lengths."""
    S = blocked.shape[-1]
    lengths = (~blocked).sum(-1)
    expect = torch.arange(S, device=blocked.device)[None, :] >= lengths[:, None]
    return lengths if torch.equal(expect, blocked) else None


def descriptor_from_dense(attn_mask: Optional[Tensor], key_padding_mask: Optional[Tensor],
                          is_causal: bool, B: int, L: int, S: int) -> Optional[MaskDescriptor]:
    """Turn torch-style masks into a descriptor, or None when they match no family.

    Recognised: no mask, right-padded ``key_padding_mask``, a causal ``attn_mask`` (bool
    upper triangle or float -inf above the diagonal, or ``is_causal=True``) and their
    combination. Semantics follow ``nn.MultiheadAttention``: every query row is computed.
    Float masks with finite non-zero entries are additive biases -> None (dense fallback).
    """
    kv = torch.full((B,), S, dtype=torch.long)
    if key_padding_mask is not None:
        if key_padding_mask.is_floating_point() and not bool(
                ((key_padding_mask == 0) | torch.isneginf(key_padding_mask)).all()):
            return None
        lengths = _suffix_lengths(_as_blocked(key_padding_mask))
        if lengths is None:
            return None
        kv = lengths.cpu()
    causal = is_causal
    if attn_mask is not None and not is_causal:
        if attn_mask.dim() != 2:
            return None
        if attn_mask.is_floating_point() and not bool(
                ((attn_mask == 0) | torch.isneginf(attn_mask)).all()):
            return None
        blocked = _as_blocked(attn_mask)
        if not blocked.any():
            causal = False
        elif torch.equal(blocked, torch.ones(L, S, dtype=torch.bool,
                                             device=blocked.device).triu(1)):
            causal = True
        else:
            return None
    if causal:
        p = _build(B, None, KV_LEN=kv, ROWS0=L, OFF0=1, WIDTH0=UNBOUNDED)
        family = "causal"
    else:
        p = _build(B, None, KV_LEN=kv, PREFIX=kv, ROWS0=L)
        family = "key_padding"
    return MaskDescriptor(p, L, S, L, family=family)


class MultiheadAttention(nn.MultiheadAttention):
    """Drop-in ``torch.nn.MultiheadAttention`` running the fused structured-mask kernel."""

    def forward(self, query: Tensor, key: Tensor, value: Tensor,
                key_padding_mask: Optional[Tensor] = None, need_weights: bool = True,
                attn_mask: Optional[Tensor] = None, average_attn_weights: bool = True,
                is_causal: bool = False, *, mask: Optional[MaskDescriptor] = None
                ) -> Tuple[Tensor, Optional[Tensor]]:
        unsupported = need_weights or self.bias_k is not None or self.add_zero_attn
        if unsupported and mask is None:
            return super().forward(query, key, value, key_padding_mask=key_padding_mask,
                                   need_weights=need_weights, attn_mask=attn_mask,
                                   average_attn_weights=average_attn_weights,
                                   is_causal=is_causal)
        if unsupported:
            raise ValueError("MultiheadAttention(mask=descriptor) supports need_weights=False "
                             "and no add_bias_kv / add_zero_attn")
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        if not self.batch_first or unbatched:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        B, L, E = query.shape
        S = key.shape[1]
        if mask is None:
            mask = descriptor_from_dense(attn_mask, key_padding_mask, is_causal, B, L, S)
            if mask is None:  # a mask no family expresses: torch's dense path is exact
                out = super().forward(
                    *(t.transpose(0, 1) if not self.batch_first or unbatched else t
                      for t in (query, key, value)),
                    key_padding_mask=key_padding_mask, need_weights=False,
                    attn_mask=attn_mask, is_causal=is_causal)[0]
                return (out.squeeze(1) if unbatched else out), None
            mask = mask.to(query.device)
        q, k, v = self._project(query, key, value)
        H, hd = self.num_heads, self.head_dim
        q = q.view(B, L, H, hd).transpose(1, 2)
        k = k.view(B, S, H, hd).transpose(1, 2)
        v = v.view(B, S, H, hd).transpose(1, 2)
        p = self.dropout if self.training else 0.0
        o = attention(q, k, v, mask, dropout_p=p)
        o = self.out_proj(o.transpose(1, 2).reshape(B, L, E))
        if not self.batch_first or unbatched:
            o = o.transpose(0, 1)
        return (o.squeeze(1) if unbatched else o), None

    def _project(self, query: Tensor, key: Tensor, value: Tensor):
        E = self.embed_dim
        if self._qkv_same_embed_dim:
            w, b = self.in_proj_weight, self.in_proj_bias
            wq, wk, wv = w[:E], w[E:2 * E], w[2 * E:]
        else:
            wq, wk, wv = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
            b = self.in_proj_bias
        bq, bk, bv = (None, None, None) if b is None else (b[:E], b[E:2 * E], b[2 * E:])
        return F.linear(query, wq, bq), F.linear(key, wk, bk), F.linear(value, wv, bv)


class TwoStreamSelfAttention(nn.Module):
    """JANUS two-stream self-attention: content (B, Lc, E) and query (B, Lq, E) streams share
    q/k/v/out projections; keys and values come from the content stream only; one fused
    attention call over the ``Lc + Lq`` rows with a two-stream descriptor whose
    ``q_split == Lc``."""

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 device=None, dtype=None) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        kw = dict(device=device, dtype=dtype)
        self.embed_dim, self.num_heads, self.dropout = embed_dim, num_heads, dropout
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **kw)
        self.k_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **kw)
        self.v_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **kw)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **kw)

    def forward(self, content: Tensor, query: Optional[Tensor], mask: MaskDescriptor
                ) -> Tuple[Tensor, Optional[Tensor]]:
        B, Lc, E = content.shape
        rows = content if query is None else torch.cat([content, query], 1)
        if mask.q_split != Lc or mask.q_len != rows.shape[1]:
            raise ValueError(f"mask: expected a two-stream descriptor with q_split={Lc} and "
                             f"q_len={rows.shape[1]}, got {mask}")
        H, hd = self.num_heads, E // self.num_heads
        q = self.q_proj(rows).view(B, -1, H, hd).transpose(1, 2)
        k = self.k_proj(content).view(B, Lc, H, hd).transpose(1, 2)
        v = self.v_proj(content).view(B, Lc, H, hd).transpose(1, 2)
        o = attention(q, k, v, mask, dropout_p=self.dropout if self.training else 0.0)
        o = self.out_proj(o.transpose(1, 2).reshape(B, -1, E))
        return o[:, :Lc], (None if query is None else o[:, Lc:])
