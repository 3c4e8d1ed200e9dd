"""Transformer building blocks whose attention is a pluggable *core*.

The projections live here; the score/softmax/value part is a callable
``core(q, k, v) -> out`` on (B, H, rows, d) tensors, so one layer serves every mask style:
the fused kernel with a mask descriptor (``fused_core``), the dense 3D-mask baseline split
per stream the way the authors run it (``dense_core``), or a plain full attention for
incremental decoding.

Two-stream decoder layers take rows ``x = [content rows ; query rows]`` and compute keys and
values from the first ``n_content`` rows only (query rows are never keys, spec §1); the
encoder attention and the FFN are row-wise, so running them on the concatenation is exactly
running them per stream -- and running them on a subset of the rows (``rows``: the last
layer, whose other rows' outputs nobody reads) is exactly that subset of the full result.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

import janus_kernels as jk
from janus_kernels.backends import resolve as resolve_backend   # cached per call signature
from janus_kernels.masks import MaskDescriptor
from janus_kernels.reference import reference_attention

from .packing import LayerRows, gather_heads, scatter_heads

__all__ = ["AttnCore", "fused_core", "dense_core", "gather_rows", "dropout", "MultiheadAttention",
           "EncoderLayer", "DecoderLayer", "encoder_layer_packed", "decoder_layer_packed",
           "reorder_cache"]

Tensor = torch.Tensor
AttnCore = Callable[[Tensor, Tensor, Tensor], Tensor]
KV = Tuple[Tensor, Tensor]


def gather_rows(x: Tensor, rows: Tensor) -> Tensor:
    """x (B, R, ...) -> (B, R_out, ...): x[b, rows[b, o]] (rows (B, R_out) long)."""
    idx = rows.reshape(rows.shape + (1,) * (x.dim() - 2)).expand(rows.shape + x.shape[2:])
    return x.gather(1, idx)


def fused_core(mask: MaskDescriptor, dropout_p: float = 0.0,
               backend: Optional[str] = None) -> AttnCore:
    """Attention through ``janus_kernels.attention`` with the mask generated in-kernel."""
    def core(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return jk.attention(q, k, v, mask, dropout_p=dropout_p, backend=backend)
    return core


def dense_core(blocks: Sequence[Tuple[int, Tensor]], dropout_p: float = 0.0) -> AttnCore:
    """The dense baseline: ``blocks`` = [(n_rows, allowed (B, n_rows, Lk) bool), ...] split the
    query rows into streams (content, query) that are attended separately with their own
    materialized 3D mask, as the authors' per-stream calls do (spec §4.1)."""
    def core(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        outs, r0 = [], 0
        for n, allowed in blocks:
            qs = q[:, :, r0:r0 + n]
            keep = None
            if dropout_p > 0:
                keep = torch.rand(qs.shape[:3] + (k.shape[2],), device=q.device) >= dropout_p
            outs.append(reference_attention(qs, k, v, allowed, keep=keep, dropout_p=dropout_p))
            r0 += n
        if r0 != q.shape[2]:
            raise ValueError(f"dense_core: blocks cover {r0} rows, q has {q.shape[2]}")
        return torch.cat(outs, 2) if len(outs) > 1 else outs[0]
    return core


class MultiheadAttention(nn.Module):
    """q/k/v/out projections (with biases, as fairseq) around an attention core."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"heads: dim {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (
            nn.Linear(dim, dim) for _ in range(4))

    def _split(self, x: Tensor) -> Tensor:
        B, L, D = x.shape
        return x.view(B, L, self.heads, D // self.heads).transpose(1, 2)

    def kv(self, x: Tensor) -> KV:
        """Keys and values (B, H, L, d) of the rows ``x`` (B, L, D)."""
        return self._split(self.k_proj(x)), self._split(self.v_proj(x))

    def forward(self, x: Tensor, kv: KV, core: AttnCore) -> Tensor:
        q = self._split(self.q_proj(x))
        o = core(q, kv[0].to(q.dtype), kv[1].to(q.dtype))
        B, H, L, d = o.shape
        return self.out_proj(o.transpose(1, 2).reshape(B, L, H * d))

    def kv_rows(self, x: Tensor, index: Tensor, B: int, L: int) -> KV:
        """Keys and values (B, H, L, d) of packed rows ``x`` (N, D), head rows ``index``
        (``packing.head_index``) of a padded layout; zeros elsewhere (padding keys)."""
        return (scatter_heads(self.k_proj(x), index, B, self.heads, L),
                scatter_heads(self.v_proj(x), index, B, self.heads, L))

    def rows(self, x: Tensor, kv: KV, core: AttnCore, index: Tensor, B: int, L: int) -> Tensor:
        """``forward`` for packed rows ``x`` (N, D): their queries go to the head rows
        ``index`` of a padded (B, H, L, d) layout for the core (built for L rows), their
        outputs are read back from there."""
        q = scatter_heads(self.q_proj(x), index, B, self.heads, L)
        o = core(q, kv[0].to(q.dtype), kv[1].to(q.dtype))
        return self.out_proj(gather_heads(o, index))


def dropout(y: Tensor, p: float, training: bool, residual: Optional[Tensor] = None) -> Tensor:
    """``residual + dropout(y, p)`` (no residual: ``dropout(y, p)``). Where a compiled kernel
    serves the device (CPU, Triton on CUDA), ``janus_kernels.dropout_add`` (one pass, its
    Philox mask regenerated by the backward; on CPU 6-11x faster than torch's per-element
    Bernoulli draws, which were 14% of a training step); elsewhere torch's dropout."""
    if not training or p == 0:
        return y if residual is None else residual + y
    if resolve_backend("dropout_add", None, y.device, y.dtype, None, "dropout") != "reference":
        if residual is None or (residual.dtype == y.dtype and residual.shape == y.shape):
            return jk.dropout_add(y, residual, p)
        return residual + jk.dropout_add(y, None, p)   # autocast: type promotion as torch's
    y = F.dropout(y, p, True)
    return y if residual is None else residual + y


class _Block(nn.Module):
    """Residual wrapper: post-LN ``LN(x + drop(f(x)))`` or pre-LN ``x + drop(f(LN(x)))``."""

    def __init__(self, dim: int, pre_ln: bool, dropout: float):
        super().__init__()
        self.ln = nn.LayerNorm(dim)
        self.pre_ln = pre_ln
        self.dropout = dropout

    def inp(self, x: Tensor) -> Tensor:
        return self.ln(x) if self.pre_ln else x

    def out(self, x: Tensor, y: Tensor) -> Tensor:
        x = dropout(y, self.dropout, self.training, residual=x)
        return x if self.pre_ln else self.ln(x)


class _FFN(nn.Module):
    def __init__(self, dim: int, ffn_dim: int, activation_dropout: float):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, ffn_dim), nn.Linear(ffn_dim, dim)
        self.activation_dropout = activation_dropout

    def forward(self, x: Tensor) -> Tensor:
        h = dropout(F.relu(self.fc1(x)), self.activation_dropout, self.training)
        return self.fc2(h)


class EncoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, ffn_dim: int, *, pre_ln: bool, dropout: float,
                 activation_dropout: float):
        super().__init__()
        self.self_attn = MultiheadAttention(dim, heads)
        self.ffn = _FFN(dim, ffn_dim, activation_dropout)
        self.b_attn, self.b_ffn = _Block(dim, pre_ln, dropout), _Block(dim, pre_ln, dropout)

    def forward(self, x: Tensor, core: AttnCore) -> Tensor:
        h = self.b_attn.inp(x)
        x = self.b_attn.out(x, self.self_attn(h, self.self_attn.kv(h), core))
        return self.b_ffn.out(x, self.ffn(self.b_ffn.inp(x)))


class DecoderLayer(nn.Module):
    """Two-stream decoder layer: self-attention of all rows against the content rows' keys,
    encoder attention, FFN; every weight shared by both streams."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, *, pre_ln: bool, dropout: float,
                 activation_dropout: float):
        super().__init__()
        self.self_attn = MultiheadAttention(dim, heads)
        self.enc_attn = MultiheadAttention(dim, heads)
        self.ffn = _FFN(dim, ffn_dim, activation_dropout)
        self.b_self, self.b_enc, self.b_ffn = (_Block(dim, pre_ln, dropout) for _ in range(3))

    def forward(self, x: Tensor, n_content: int, self_core: AttnCore, enc_kv: KV,
                enc_core: AttnCore, cache: Optional[Dict[str, Tensor]] = None,
                rows: Optional[Tensor] = None) -> Tensor:
        """x (B, R, D): rows [content (n_content) ; query]. With ``cache`` (incremental
        decoding) the new content rows' keys/values are appended to ``cache['k'/'v']`` and
        attention runs over all cached content keys, each key held once (spec §5.5).

        rows (B, R_out): compute only these rows' outputs -> (B, R_out, D); keys/values still
        come from every content row of ``x`` (``self_core`` must be built for R_out rows)."""
        h = self.b_self.inp(x)
        k, v = self.self_attn.kv(h[:, :n_content])
        if cache is not None:
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)
            cache["k"], cache["v"] = k, v
        if rows is not None:
            x, h = gather_rows(x, rows), gather_rows(h, rows)
        x = self.b_self.out(x, self.self_attn(h, (k, v), self_core))
        x = self.b_enc.out(x, self.enc_attn(self.b_enc.inp(x), enc_kv, enc_core))
        return self.b_ffn.out(x, self.ffn(self.b_ffn.inp(x)))


def encoder_layer_packed(layer: EncoderLayer, x: Tensor, core: AttnCore, heads: Tensor,
                         B: int, S: int) -> Tensor:
    """``layer`` on the packed real source rows x (N, D) (janus_model.packing.SourceRows:
    ``heads`` their head rows of the (B, H, S, d) layout the core is built for) -> (N, D)."""
    h = layer.b_attn.inp(x)
    kv = layer.self_attn.kv_rows(h, heads, B, S)
    x = layer.b_attn.out(x, layer.self_attn.rows(h, kv, core, heads, B, S))
    return layer.b_ffn.out(x, layer.ffn(layer.b_ffn.inp(x)))


def decoder_layer_packed(layer: DecoderLayer, x: Tensor, kv_src: Tensor, kv_heads: Tensor,
                         n_content: int, self_core: AttnCore, enc_kv: KV, enc_core: AttnCore,
                         rows: LayerRows) -> Tensor:
    """``layer`` on packed rows (janus_model.packing): x (N_in, D) are the live rows of the
    layer input; keys/values come from rows ``kv_src`` (placed at the head rows ``kv_heads``
    of the (B, H, n_content, d) key layout); the rows ``rows.take`` (all: None) are computed, with
    ``self_core`` built for ``rows.q_len`` rows and ``enc_core`` for the compact
    ``rows.enc_len`` rows -> (N_out, D)."""
    B, H = rows.B, layer.self_attn.heads
    h = layer.b_self.inp(x)
    kv = layer.self_attn.kv_rows(h.index_select(0, kv_src), kv_heads, B, n_content)
    if rows.take is not None:
        x, h = x.index_select(0, rows.take), h.index_select(0, rows.take)
    x = layer.b_self.out(x, layer.self_attn.rows(h, kv, self_core, rows.q_heads(H), B,
                                                 rows.q_len))
    x = layer.b_enc.out(x, layer.enc_attn.rows(layer.b_enc.inp(x), enc_kv, enc_core,
                                               rows.enc_heads(H), B, rows.enc_len))
    return layer.b_ffn.out(x, layer.ffn(layer.b_ffn.inp(x)))


def reorder_cache(caches: List[Dict[str, Tensor]], order: Tensor) -> None:
    """Beam search: select batch rows ``order`` of every cached key/value in place."""
    for c in caches:
        for name in list(c):
            c[name] = c[name].index_select(0, order)
