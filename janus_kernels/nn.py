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
from .masks import UNBOUNDED, MaskDescriptor, _make

__all__ = ["MultiheadAttention", "TwoStreamSelfAttention", "descriptor_from_dense"]

_NEED_ATTN_MASK = ("Need attn_mask if specifying the is_causal hint. You may use the Transformer "
                   "module method `generate_square_subsequent_mask` to create this mask.")
_FLOAT_BIAS = ("janus_kernels.nn.MultiheadAttention: a float key_padding_mask with finite "
               "non-zero entries (an additive bias) has no fused form; use "
               "torch.nn.MultiheadAttention or a bool mask")
_CAUSAL_HOLES = ("janus_kernels.nn.MultiheadAttention: a causal mask with a key_padding_mask "
                 "that is not right-padded has no fused form; use torch.nn.MultiheadAttention")


def _as_blocked(mask: Tensor) -> Tensor:
    """torch's mask conventions -> bool 'blocked' (True = may NOT attend)."""
    if mask.dtype == torch.bool:
        return mask
    return torch.isneginf(mask) if mask.is_floating_point() else mask.bool()


def _is_zero_or_neginf_t(mask: Tensor) -> Tensor:
    """0-d bool tensor: a float mask that only blocks (0 / -inf entries). Finite non-zero
    entries are additive biases no descriptor expresses."""
    return ((mask == 0) | torch.isneginf(mask)).all()


def _is_zero_or_neginf(mask: Tensor) -> bool:
    """:func:`_is_zero_or_neginf_t` read on the host (True for non-float masks)."""
    return not mask.is_floating_point() or bool(_is_zero_or_neginf_t(mask))


def _suffix_blocked(blocked: Tensor, lengths: Tensor) -> Tensor:
    """Whether every row of the (B, S) key mask blocks exactly the keys >= its length (a 0-d
    bool tensor: no host sync here)."""
    expect = torch.arange(blocked.shape[-1], device=blocked.device)[None, :] >= lengths[:, None]
    return (expect == blocked).all()


def _dense_causal(attn_mask: Tensor, L: int, S: int) -> Optional[bool]:
    """Host-side reading of a (L, S) attn_mask: True = causal (j <= i), False = blocks
    nothing, None = anything else. Reads the values (used only where that is free)."""
    if not _is_zero_or_neginf(attn_mask):
        return None
    blocked = _as_blocked(attn_mask)
    if not bool(blocked.any()):
        return False
    causal = torch.ones(L, S, dtype=torch.bool, device=blocked.device).triu(1)
    return True if torch.equal(blocked, causal) else None


def _descriptor(B: int, L: int, S: int, causal: bool, lengths: Optional[Tensor],
                device: torch.device) -> MaskDescriptor:
    """nn.MultiheadAttention semantics as a descriptor: every query row is computed; keys
    ``>= lengths[b]`` are padding; causal is top-left aligned (key j <= row i), as
    ``generate_square_subsequent_mask``. Built on ``device`` from tensor ops only."""
    kv = S if lengths is None else lengths.to(device)
    if causal:
        return _make(B, device, L, S, L, "causal", KV_LEN=kv, ROWS0=L, OFF0=1, WIDTH0=UNBOUNDED)
    return _make(B, device, L, S, L, "key_padding", KV_LEN=kv, PREFIX=kv, ROWS0=L)


def descriptor_from_dense(attn_mask: Optional[Tensor], key_padding_mask: Optional[Tensor],
                          is_causal: bool, B: int, L: int, S: int) -> Optional[MaskDescriptor]:
    """Turn torch-style masks into a descriptor, or None when they match no family.

    Recognised: no mask, right-padded ``key_padding_mask``, a causal ``attn_mask`` (bool
    upper triangle or float -inf above the diagonal, or ``is_causal=True``) and their
    combination. Semantics follow ``nn.MultiheadAttention``: every query row is computed.
    Float masks with finite non-zero entries are additive biases -> None (dense fallback).
    Reads the mask values (a host sync for GPU masks): the module itself avoids that, see
    :class:`MultiheadAttention`.
    """
    causal = bool(is_causal)
    if attn_mask is not None and not causal:
        if tuple(attn_mask.shape) != (L, S):
            return None
        c = _dense_causal(attn_mask, L, S)
        if c is None:
            return None
        causal = c
    lengths = None
    if key_padding_mask is not None:
        if not _is_zero_or_neginf(key_padding_mask):
            return None
        blocked = _as_blocked(key_padding_mask)
        lengths = (~blocked).sum(-1)
        if not bool(_suffix_blocked(blocked, lengths)):
            return None
    return _descriptor(B, L, S, causal, lengths, torch.device("cpu"))


class MultiheadAttention(nn.MultiheadAttention):
    """Drop-in ``torch.nn.MultiheadAttention`` running the fused structured-mask kernel.

    Which masks run fused (everything else goes to torch's own implementation, so results
    always match it):

    * no mask; ``is_causal=True`` with an ``attn_mask`` (trusted as causal, as torch's
      ``is_causal`` hint is); a bool ``key_padding_mask`` of any pattern; both together
      when the key padding is right-padding.
    * Eagerly on CPU tensors the masks are also read (free there): a causal or all-zero
      ``attn_mask`` without ``is_causal``, float 0/-inf key padding, and causal + key
      padding that is not right-padded (torch's path) are recognised.
    * Under ``torch.compile`` and on GPUs nothing is read on the host (no data-dependent
      branch, no sync): an ``attn_mask`` without ``is_causal`` takes torch's path; a float
      ``key_padding_mask`` (what ``nn.TransformerEncoder``/``Decoder`` pass on) is taken
      as 0 = keep, -inf = blocked, and one with other values (an additive bias), or causal
      + key padding that is not right-padded, fails a device-side assert (the kernel
      cannot express them; use ``torch.nn.MultiheadAttention`` for such masks).

    Key padding without a causal mask is exact for any pattern: the kept keys are gathered
    to the front (attention does not depend on the key order) and become a length.
    ``mask=`` takes a :class:`~janus_kernels.masks.MaskDescriptor` instead of the torch
    masks. ``torch.jit.script`` scripts torch's implementation of the same parameters.
    """

    def forward(self, query: Tensor, key: Tensor, value: Tensor,
                key_padding_mask: Optional[Tensor] = None, need_weights: bool = True,
                attn_mask: Optional[Tensor] = None, average_attn_weights: bool = True,
                is_causal: bool = False, *, mask: Optional[MaskDescriptor] = None
                ) -> Tuple[Tensor, Optional[Tensor]]:
        if mask is not None:
            return self._forward_descriptor(query, key, value, key_padding_mask, need_weights,
                                            attn_mask, is_causal, mask)
        if is_causal and attn_mask is None:
            raise RuntimeError(_NEED_ATTN_MASK)
        plan = self._plan(query, key, value, key_padding_mask, need_weights, attn_mask,
                          is_causal)
        torch_args = dict(key_padding_mask=key_padding_mask, need_weights=need_weights,
                          attn_mask=attn_mask, average_attn_weights=average_attn_weights,
                          is_causal=is_causal)
        if plan is None:  # torch's path is exact for everything
            return super().forward(query, key, value, **torch_args)
        causal, blocked = plan
        unbatched = query.dim() == 2
        q, k, v = self._batch_first(query, key, value, unbatched)
        B, L, S = q.shape[0], q.shape[1], k.shape[1]
        lengths = None
        if blocked is not None:
            if unbatched:
                blocked = blocked.unsqueeze(0)
            lengths = (~blocked).sum(-1)
            if self._reads_values(query):     # eager CPU: look, and skip needless work
                if not bool(_suffix_blocked(blocked, lengths)):
                    if causal:                # no fused form: torch's path
                        return super().forward(query, key, value, **torch_args)
                    k, v = _kept_keys_first(k, v, blocked)
            elif causal:
                torch._assert_async(_suffix_blocked(blocked, lengths), _CAUSAL_HOLES)
            else:
                k, v = _kept_keys_first(k, v, blocked)
        desc = _descriptor(B, L, S, causal, lengths, q.device)
        return self._attend(q, k, v, desc, unbatched)

    # ------------------------------------------------------------------ helpers
    def _plan(self, query: Tensor, key: Tensor, value: Tensor,
              key_padding_mask: Optional[Tensor], need_weights: bool,
              attn_mask: Optional[Tensor], is_causal: bool
              ) -> Optional[Tuple[bool, Optional[Tensor]]]:
        """(causal, blocked keys or None) when the call runs fused, None for torch's path.
        Reads mask values only where ``_reads_values`` says it is free."""
        if need_weights or self.bias_k is not None or self.add_zero_attn:
            return None
        if query.is_nested or key.is_nested or value.is_nested:
            return None
        if query.dim() not in (2, 3) or key.dim() != query.dim() or value.dim() != query.dim():
            return None                      # torch's path raises its own error
        unbatched = query.dim() == 2
        L = query.shape[0] if unbatched or not self.batch_first else query.shape[1]
        S = key.shape[0] if unbatched or not self.batch_first else key.shape[1]
        B = 1 if unbatched else query.shape[0 if self.batch_first else 1]
        reads = self._reads_values(query)
        causal = False
        if attn_mask is not None:
            if tuple(attn_mask.shape) != (L, S) or not (
                    attn_mask.dtype == torch.bool or attn_mask.is_floating_point()):
                return None
            if is_causal:
                causal = True                # the hint, trusted as torch trusts it
            elif not reads:
                return None
            else:
                c = _dense_causal(attn_mask, L, S)
                if c is None:
                    return None
                causal = c
        blocked = None
        if key_padding_mask is not None:
            expect = (S,) if unbatched else (B, S)
            if tuple(key_padding_mask.shape) != expect:
                return None
            if key_padding_mask.dtype == torch.bool:
                blocked = key_padding_mask
            elif not key_padding_mask.is_floating_point():
                return None                  # torch's path raises its own error
            elif not reads:                  # nn.Transformer* hand over float 0/-inf masks
                torch._assert_async(_is_zero_or_neginf_t(key_padding_mask), _FLOAT_BIAS)
                blocked = torch.isneginf(key_padding_mask)
            elif _is_zero_or_neginf(key_padding_mask):
                blocked = torch.isneginf(key_padding_mask)
            else:
                return None                  # an additive bias: torch's path
        return causal, blocked

    @staticmethod
    def _reads_values(t: Tensor) -> bool:
        """Whether reading mask values on the host is free: eager, CPU tensors."""
        return t.device.type == "cpu" and not torch.compiler.is_compiling()

    def _batch_first(self, query: Tensor, key: Tensor, value: Tensor, unbatched: bool):
        if unbatched:
            return query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
        if not self.batch_first:
            return query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        return query, key, value

    def _forward_descriptor(self, query: Tensor, key: Tensor, value: Tensor,
                            key_padding_mask: Optional[Tensor], need_weights: bool,
                            attn_mask: Optional[Tensor], is_causal: bool,
                            mask: MaskDescriptor) -> Tuple[Tensor, Optional[Tensor]]:
        if attn_mask is not None or key_padding_mask is not None or is_causal:
            raise ValueError("MultiheadAttention: mask= (a MaskDescriptor) replaces attn_mask, "
                             "key_padding_mask and is_causal; pass either the descriptor or "
                             "torch's masks, not both")
        if not isinstance(mask, MaskDescriptor):
            raise TypeError(f"MultiheadAttention: mask= must be a MaskDescriptor, got "
                            f"{type(mask).__name__}")
        if need_weights or self.bias_k is not None or self.add_zero_attn:
            raise ValueError("MultiheadAttention(mask=descriptor) supports need_weights=False "
                             "and no add_bias_kv / add_zero_attn")
        if query.is_nested or query.dim() not in (2, 3):
            raise ValueError(f"MultiheadAttention(mask=descriptor): query must be a dense 2-D "
                             f"or 3-D tensor, got {'a nested tensor' if query.is_nested else tuple(query.shape)}")
        unbatched = query.dim() == 2
        q, k, v = self._batch_first(query, key, value, unbatched)
        return self._attend(q, k, v, mask.to(q.device), unbatched)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mask: MaskDescriptor, unbatched: bool
                ) -> Tuple[Tensor, Optional[Tensor]]:
        """Projections, fused attention, output projection on batch-first (B, L, E) inputs;
        returns the output in the caller's layout."""
        B, L, E = q.shape
        S = k.shape[1]
        q, k, v = self._project(q, k, v)
        H, hd = self.num_heads, self.head_dim
        q = q.view(B, L, H, hd).transpose(1, 2)
        k = k.view(B, S, H, hd).transpose(1, 2)
        v = v.view(B, S, H, hd).transpose(1, 2)
        p = self.dropout if self.training else 0.0
        o = attention(q, k, v, mask, dropout_p=p)
        o = self.out_proj(o.transpose(1, 2).reshape(B, L, E))
        if unbatched:
            return o.squeeze(0), None
        return (o if self.batch_first else o.transpose(0, 1)), None

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

    def __prepare_scriptable__(self) -> nn.MultiheadAttention:
        """``torch.jit.script`` calls this first (also on submodules): TorchScript cannot
        compile the descriptor path, so it gets torch's MultiheadAttention sharing these
        very parameters (training the scripted model trains this one). Note that
        torch.jit.script(parent) stores what this returns in the parent's submodules (torch's
        mechanism), so the eager parent then runs torch's implementation too: same results."""
        plain = nn.MultiheadAttention.__new__(nn.MultiheadAttention)
        plain.__dict__.update(self.__dict__)
        for name in ("_parameters", "_buffers", "_modules"):
            plain.__dict__[name] = dict(self.__dict__[name])
        return plain


def _kept_keys_first(k: Tensor, v: Tensor, blocked: Tensor) -> Tuple[Tensor, Tensor]:
    """Reorder the keys (B, S, E) of each sample so the kept ones come first, in order: the
    key padding then is a length. Exact, since without a causal mask attention does not
    depend on the key order (and the gather's gradient is an exact scatter)."""
    order = torch.sort(blocked.to(torch.int8), dim=-1, stable=True).indices
    k = k.gather(1, order[:, :, None].expand(-1, -1, k.shape[-1]))
    v = v.gather(1, order[:, :, None].expand(-1, -1, v.shape[-1]))
    return k, v


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
