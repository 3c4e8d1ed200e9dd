"""Score modifiers: the per-head relative-position biases of ALiBi and T5, as the small table
``attention(..., rel_bias=)`` takes, never as an (Lq, Lk) tensor.

The kernels add ``rel_bias[h, j - i + Lq - 1]`` to the score of query row ``i`` and key
``j`` (after the optional softcap), so a bias that depends only on ``h`` and the distance
``j - i`` is a ``(H, Lq + Lk - 1)`` table: column ``t`` serves every ``(i, j)`` with
``j - i = t - (Lq - 1)``. The builders below fill it with torch ops, so gradients flow to
the ALiBi slopes or to the T5 ``(H, num_buckets)`` embedding through an ordinary gather.

Positions: query row ``i`` sits at key position ``q_offset + i`` (default ``Lk - Lq``: the
torch / Hugging Face diagonal, e.g. one decoding step against a KV cache), so the signed
distance the models bucket is ``j - (q_offset + i)``.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

__all__ = ["rel_bias_len", "relative_distance", "alibi_slopes", "alibi_bias", "t5_buckets",
           "t5_bias", "dense_rel_bias", "rel_bias_grad"]


def rel_bias_len(q_len: int, kv_len: int) -> int:
    """Columns of the relative-bias table for (q_len, kv_len): one per diagonal."""
    return max(q_len + kv_len - 1, 0)


def relative_distance(q_len: int, kv_len: int, q_offset: Optional[int] = None,
                      device: Optional[torch.device] = None) -> torch.Tensor:
    """(Lq + Lk - 1,) int64: the signed distance key - query of each table column."""
    off = kv_len - q_len if q_offset is None else int(q_offset)
    t = torch.arange(rel_bias_len(q_len, kv_len), device=device, dtype=torch.int64)
    return t - (q_len - 1) - off


def alibi_slopes(n_heads: int, device: Optional[torch.device] = None) -> torch.Tensor:
    """The ALiBi head slopes (Press et al., 2022): for a power of two n, the geometric
    sequence 2^(-8/n), 2^(-16/n), ...; otherwise the sequence of the next lower power of two
    followed by every other slope of the sequence for twice that power."""
    if n_heads < 1:
        raise ValueError(f"alibi_slopes: n_heads must be >= 1, got {n_heads}")

    def geometric(n: int) -> list:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    p = 2 ** int(math.floor(math.log2(n_heads)))
    slopes = geometric(p)
    if p != n_heads:
        slopes += geometric(2 * p)[0::2][: n_heads - p]
    return torch.tensor(slopes, dtype=torch.float32, device=device)


def alibi_bias(slopes: torch.Tensor, q_len: int, kv_len: int,
               q_offset: Optional[int] = None) -> torch.Tensor:
    """(H, Lq + Lk - 1) float32 table of ``slope_h * (j - pos(i))``: ALiBi's linear
    penalty (non-positive on the causal side). Softmax ignores per-row constants, so models
    that add ``slope * key_position`` instead (BLOOM) get the same attention."""
    if slopes.dim() != 1:
        raise ValueError(f"alibi_bias: slopes must be 1-D (heads,), got {tuple(slopes.shape)}")
    dist = relative_distance(q_len, kv_len, q_offset, slopes.device)
    return slopes.float()[:, None] * dist.float()[None, :]


def t5_buckets(distance: torch.Tensor, *, bidirectional: bool, num_buckets: int,
               max_distance: int) -> torch.Tensor:
    """T5's relative-position buckets of signed distances key - query (Raffel et al.,
    2020): half the buckets (all, if not bidirectional) cover |distance| exactly up to
    num_buckets/4 (/2), the rest logarithmically up to max_distance; a bidirectional bias
    gives positive distances the upper half. Float32 log as the reference models do, so
    bucket edges agree with them exactly."""
    n = num_buckets // 2 if bidirectional else num_buckets
    exact = n // 2
    if exact < 1 or max_distance <= exact:
        raise ValueError(f"t5_buckets: num_buckets={num_buckets} (bidirectional={bidirectional}) "
                         f"leaves no exact range below max_distance={max_distance}")
    n = num_buckets
    bucket = torch.zeros_like(distance)
    if bidirectional:
        n //= 2
        bucket = bucket + (distance > 0).to(distance.dtype) * n
        dist = distance.abs()
    else:
        dist = (-distance).clamp(min=0)
    exact = n // 2
    far = exact + (torch.log(dist.float() / exact) / math.log(max_distance / exact)
                   * (n - exact)).to(distance.dtype)
    far = torch.minimum(far, torch.full_like(far, n - 1))
    return bucket + torch.where(dist < exact, dist, far)


def t5_bias(table: torch.Tensor, q_len: int, kv_len: int, *, bidirectional: bool,
            num_buckets: int, max_distance: int, q_offset: int = 0) -> torch.Tensor:
    """(H, Lq + Lk - 1) float32 table from T5's ``(H, num_buckets)`` bias embedding (the
    transpose of ``relative_attention_bias.weight``); T5 numbers queries from ``q_offset``
    (0, or the cache length when decoding)."""
    if table.dim() != 2 or table.shape[1] != num_buckets:
        raise ValueError(f"t5_bias: table must be (heads, num_buckets={num_buckets}), got "
                         f"{tuple(table.shape)}")
    dist = relative_distance(q_len, kv_len, q_offset, table.device)
    idx = t5_buckets(dist, bidirectional=bidirectional, num_buckets=num_buckets,
                     max_distance=max_distance)
    return table.float()[:, idx]


def _diagonal_index(q_len: int, kv_len: int, device) -> torch.Tensor:
    i = torch.arange(q_len, device=device)[:, None]
    j = torch.arange(kv_len, device=device)[None, :]
    return j - i + (q_len - 1)


def dense_rel_bias(rel_bias: torch.Tensor, q_len: int, kv_len: int) -> torch.Tensor:
    """(H, Lq, Lk): the table spread over the score matrix (dense: for the reference only)."""
    return rel_bias[:, _diagonal_index(q_len, kv_len, rel_bias.device)]


def rel_bias_grad(dscore: torch.Tensor) -> torch.Tensor:
    """(H, Lq + Lk - 1) float32 gradient of the table from a dense (B, H, Lq, Lk) score
    gradient: its sum over the batch and each diagonal (for the reference only)."""
    B, H, Lq, Lk = dscore.shape
    idx = _diagonal_index(Lq, Lk, dscore.device).reshape(-1)
    out = torch.zeros(H, rel_bias_len(Lq, Lk), dtype=torch.float32, device=dscore.device)
    return out.index_add_(1, idx, dscore.sum(0).reshape(H, -1).float())
