"""Attention-dropout keep-masks from the counter-based Philox4x32-10 RNG, bit-identical to
csrc/include/janus/philox.h (CPU and CUDA kernels) and the Triton kernels.

Element (b, h, i, j) is kept iff ``philox(counter=(j>>2, i, b*H+h, 0), key=seed)[j & 3] >=
floor(p * 2^32)``. This module is the dense reference: it builds the full (B, H, Lq, Lk)
keep-mask for tests and the dense baselines; kernels regenerate bits on the fly."""
from __future__ import annotations

import torch

__all__ = ["philox4x32_10", "drop_threshold", "dropout_keep_mask"]

_M32 = 0xFFFFFFFF


def _mulhilo(a: int, b: torch.Tensor):
    """(lo, hi) 32-bit halves of a * b for a < 2^32 constant and int64 b < 2^32, without
    int64 overflow (split b into 16-bit halves)."""
    t1 = a * (b & 0xFFFF)
    t2 = a * (b >> 16)
    s = t2 + (t1 >> 16)
    return ((s & 0xFFFF) << 16) | (t1 & 0xFFFF), s >> 16


def philox4x32_10(c0, c1, c2, c3, k0: int, k1: int):
    """Vectorized Philox4x32-10 on int64 tensors holding uint32 values."""
    for _ in range(10):
        lo0, hi0 = _mulhilo(0xD2511F53, c0)
        lo1, hi1 = _mulhilo(0xCD9E8D57, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + 0x9E3779B9) & _M32
        k1 = (k1 + 0xBB67AE85) & _M32
    return c0, c1, c2, c3


def drop_threshold(p: float) -> int:
    if p <= 0:
        return 0
    return min(int(p * 4294967296.0), _M32)


def dropout_keep_mask(seed: int, B: int, H: int, q_len: int, kv_len: int, p: float,
                      device=None) -> torch.Tensor:
    """Dense bool keep-mask (B, H, q_len, kv_len) for dropout probability p."""
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    k0, k1 = seed & _M32, seed >> 32
    bh = torch.arange(B * H, device=device, dtype=torch.int64).view(B, H, 1, 1)
    i = torch.arange(q_len, device=device, dtype=torch.int64).view(1, 1, q_len, 1)
    j = torch.arange(kv_len, device=device, dtype=torch.int64).view(1, 1, 1, kv_len)
    shape = (B, H, q_len, kv_len)
    c0 = (j >> 2).expand(shape)
    c1 = i.expand(shape)
    c2 = bh.expand(shape)
    c3 = torch.zeros(shape, dtype=torch.int64, device=device)
    w = philox4x32_10(c0, c1, c2, c3, k0, k1)
    lane = (j & 3).expand(shape)
    u = torch.where(lane == 0, w[0], torch.where(lane == 1, w[1], torch.where(lane == 2, w[2], w[3])))
    return u >= drop_threshold(p)
