"""Triton flash attention with the structured mask generated in-kernel from a
:class:`~janus_kernels.masks.MaskDescriptor` (the ``"triton"`` backend of
``janus_kernels.attention``).

Forward (one program per (b*H + h, stream row tile): B*H on grid x, which allows 2^31 - 1
programs where y allows 65535; see launch_grid), online softmax in base 2::

    s_ij = (q_i . k_j) * scale * log2(e)          masked to -inf where not allowed
    m_i  = max_j s_ij,  l_i = sum_j 2^(s_ij - m_i),  o_i = sum_j 2^(s_ij - m_i) z_ij v_j / l_i
    lse_i = (m_i + log2 l_i) * ln 2               (-inf and o_i = 0 when row i sees no key)

where ``z_ij = keep_ij / (1 - p)`` is the Philox dropout factor (1 without dropout). Row
tiles never straddle the two streams, so a tile's key range is the exact union
``[0, PREFIX) U [lo(first row), hi(last row))`` from the descriptor; only those key tiles are
visited, and the predicate is evaluated only on tiles whose class is PARTIAL.

Backward (FlashAttention-2): ``delta_i = sum_d dO_id O_id``; with ``p_ij = 2^(s_ij - lse_i
log2 e)``::

    dV_j = sum_i p_ij z_ij dO_i          dP_ij = z_ij (dO_i . v_j)
    dS_ij = p_ij (dP_ij - delta_i)       dQ_i = scale sum_j dS_ij k_j,  dK_j = scale sum_i dS_ij q_i

One kernel per key tile and kv head accumulates dK/dV over the query tiles of both streams
that can see the key tile (closed-form row range, ``mask.window_query_range``) and over the
query heads of its GQA group, so no atomics are needed; a second kernel per query row tile
accumulates dQ over the same key tiles as the forward.

Score modifiers (softcap, relative bias; :mod:`janus_kernels.triton.score_mods`) enter every
kernel's score tile under constexpr flags (the plain path compiles as before); the dK/dV
kernel adds dS to the bias table's gradient with float32 atomics (summation order, hence the
last bits of d_rel_bias, vary between GPU runs; dq/dk/dv stay deterministic).
"""
from __future__ import annotations

import math
import os
from typing import Dict, Optional, Tuple

import torch
import triton

from . import mask as jm
# the kernels (attention_kernels.py) and their shared pieces (attention_tiles.py); _row_tile
# is re-exported for the tests that place row tiles with it
from .attention_kernels import _attn_bwd_dkdv, _attn_bwd_dq, _attn_fwd, _bwd_preprocess
from .attention_tiles import _row_tile  # noqa: F401

__all__ = ["attention_fwd", "attention_bwd", "CONFIGS", "get_config", "head_dim_pad", "launch_grid",
           "use_tf32"]

LOG2E = math.log2(math.e)


# ======================================================================= configuration
# (BLOCK_M, BLOCK_N, num_warps, num_stages) per kernel and padded head dim; BLOCK_M is the
# query tile and BLOCK_N the key tile in every kernel. Chosen by AOT-compiling candidates
# for sm_80 and sm_90 (`python -m janus_kernels.triton.aot`): every 2-byte entry (CONFIGS)
# fits shared memory with 0 register spills for both mask kinds, with and without dropout
# (tests/test_triton_compile.py checks d=64/128). The dK/dV kernel holds two (BLOCK_N, d)
# fp32 accumulators plus k, v and computes five (BLOCK_N, BLOCK_M) tiles per step, hence its
# small query tiles. FP32_CONFIGS (4-byte inputs, IEEE fp32 dots on the FMA units) use
# small tiles and compile with 0 spills too (same test). ptxas caps registers at occupancy
# steps (80/128/168 for 128 threads) and evicts a couple of loop-invariant values when the
# loop needs a few more: with 4 warps the fp32 dK/dV kernel did so at d=64 (sm_80) and d=128
# (8 bytes). 8 warps halve each thread's share of the accumulators and of the 16x16 tiles
# (dK/dV has no row reductions), leaving 80-106 registers without dropout and no spill at
# d=64/128 for either mask kind with or without dropout, except permutation + dropout at
# d=128 on sm_90 (16 bytes). d=16/32/256 keep 4 warps (8 warps spill more there).
CONFIGS: Dict[str, Dict[int, Tuple[int, int, int, int]]] = {
    "fwd": {16: (128, 64, 4, 3), 32: (128, 64, 4, 3), 64: (128, 64, 8, 3),
            128: (128, 64, 8, 3), 256: (64, 32, 8, 2)},
    "dkdv": {16: (32, 64, 4, 2), 32: (32, 64, 4, 2), 64: (16, 64, 4, 2),
             128: (16, 64, 8, 2), 256: (16, 16, 4, 1)},
    "dq": {16: (64, 64, 4, 2), 32: (64, 64, 4, 2), 64: (64, 64, 8, 2),
           128: (64, 64, 8, 2), 256: (32, 64, 8, 1)},
    "pre": {16: (64, 0, 4, 1), 32: (64, 0, 4, 1), 64: (64, 0, 4, 1),
            128: (64, 0, 4, 1), 256: (32, 0, 4, 1)},
}
FP32_CONFIGS: Dict[str, Dict[int, Tuple[int, int, int, int]]] = {
    "fwd": {16: (32, 32, 4, 2), 32: (32, 32, 4, 2), 64: (32, 32, 4, 2),
            128: (32, 32, 4, 1), 256: (16, 16, 4, 1)},
    "dkdv": {16: (16, 16, 4, 1), 32: (16, 16, 4, 1), 64: (16, 16, 8, 1),
             128: (16, 16, 8, 1), 256: (16, 16, 4, 1)},
    "dq": {16: (32, 32, 4, 1), 32: (32, 32, 4, 1), 64: (32, 32, 4, 1),
           128: (16, 16, 4, 1), 256: (16, 16, 4, 1)},
}
#: fp32 inputs with TF32 dots (use_tf32): the forward takes 64-row tiles (wgmma on sm_90,
#: no spills on sm_80/90 at d <= 128, AOT-checked); the backward kernels keep FP32_CONFIGS
#: (their small tiles compile with TF32 mma.sync and no spills too).
TF32_CONFIGS: Dict[str, Dict[int, Tuple[int, int, int, int]]] = {
    "fwd": {16: (64, 32, 4, 2), 32: (64, 32, 4, 2), 64: (64, 32, 4, 2), 128: (64, 32, 4, 2),
            256: (16, 16, 4, 1)},
}
#: Kernels with score modifiers (HAS_SOFTCAP / HAS_REL_BIAS) where the plain config spills
#: (the bias gather and the tanh add (BLOCK_M, BLOCK_N) tiles of live values per score tile),
#: per input kind ("16bit", "fp32" IEEE, "tf32"); the others keep the plain config. Every
#: entry AOT-compiles with 0 spills on sm_80 and sm_90
#: (`python -m janus_kernels.triton.aot --mods`).
MODS_CONFIGS: Dict[str, Dict[str, Dict[int, Tuple[int, int, int, int]]]] = {
    "16bit": {"fwd": {128: (128, 32, 8, 2)},
              "dq": {64: (32, 64, 4, 2), 128: (32, 64, 8, 2)}},
    "fp32": {"fwd": {64: (32, 32, 8, 2), 128: (16, 32, 4, 1)}, "dq": {64: (16, 16, 4, 1)}},
    "tf32": {"fwd": {128: (32, 32, 8, 2)}, "dkdv": {64: (16, 32, 8, 1)}},
}
#: Blocks used under TRITON_INTERPRET=1 (the interpreter costs ~ms per tile iteration, so
#: small tiles keep the tests fast and exercise many tile boundaries). Tests may patch it.
INTERPRETER_BLOCKS: Tuple[int, int] = (16, 16)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def head_dim_pad(d: int) -> int:
    """Head dim rounded up to a power of two, at least 16 (the tl.dot minimum)."""
    return max(16, triton.next_power_of_2(d))


def get_config(kernel: str, d_pad: int, dtype: torch.dtype,
               tf32: bool = False, mods: bool = False) -> Tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) of `kernel` ('fwd', 'dkdv', 'dq', 'pre');
    `tf32`: fp32 inputs with TF32 dots; `mods`: score modifiers on."""
    if _interpreting():
        bm, bn = INTERPRETER_BLOCKS
        return bm, bn, 4, 1
    if mods:
        kind = "16bit" if dtype.itemsize == 2 else "tf32" if tf32 else "fp32"
        cfg = MODS_CONFIGS[kind].get(kernel, {}).get(d_pad)
        if cfg is not None:
            return cfg
    if tf32 and dtype == torch.float32 and kernel in TF32_CONFIGS:
        return TF32_CONFIGS[kernel][d_pad]
    if dtype.itemsize >= 4 and kernel in FP32_CONFIGS:
        return FP32_CONFIGS[kernel][d_pad]
    return CONFIGS[kernel][d_pad]


# ========================================================================= validation
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_device(t: torch.Tensor, name: str) -> None:
    if t.device.type == "cuda":
        return
    if t.device.type == "cpu" and _interpreting():
        return
    raise RuntimeError(f"triton attention: {name} is on {t.device}; the Triton backend needs "
                       f"CUDA tensors (or CPU tensors with TRITON_INTERPRET=1 set before "
                       f"importing janus_kernels)")


def _check_common(q, k, v, params, rank, q_split, kind, dropout_p, seed) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"triton attention: {name} must be a 4-D tensor (B, heads, length, "
                             f"head_dim), got {getattr(t, 'shape', type(t).__name__)}")
        if t.dtype not in _DTYPES:
            raise TypeError(f"triton attention: {name} must be float16/bfloat16/float32/float64, "
                            f"got {t.dtype}")
        _check_device(t, name)
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"triton attention: q, k, v must share a dtype, got {q.dtype}, "
                        f"{k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"triton attention: q, k, v must be on one device, got {q.device}, "
                         f"{k.device}, {v.device}")
    B, H, Lq, d = q.shape
    if k.shape != v.shape or k.shape[0] != B or k.shape[3] != d:
        raise ValueError(f"triton attention: k and v must both be (B={B}, Hkv, Lk, d={d}), got "
                         f"{tuple(k.shape)} and {tuple(v.shape)}")
    if k.shape[1] == 0 or H % k.shape[1] != 0:
        raise ValueError(f"triton attention: q heads ({H}) must be a multiple of k/v heads "
                         f"({k.shape[1]})")
    if not 1 <= d <= 256:
        raise ValueError(f"triton attention: head_dim must be in [1, 256], got {d}")
    if not isinstance(params, torch.Tensor) or params.dtype != torch.int32 \
            or tuple(params.shape) != (B, jm.NUM_FIELDS.value) or params.device != q.device:
        raise ValueError(f"triton attention: params must be int32 ({B}, {jm.NUM_FIELDS.value}) on "
                         f"{q.device}, got {_describe(params)}")
    if kind not in (0, 1, 2):
        raise ValueError(f"triton attention: kind must be 0 (window), 1 (permutation) or 2 "
                         f"(documents), got {kind}")
    width = {1: k.shape[2], 2: Lq + k.shape[2]}.get(kind)
    if width is not None and (not isinstance(rank, torch.Tensor) or rank.dtype != torch.int32
                              or tuple(rank.shape) != (B, width) or rank.device != q.device):
        what = "the permutation kind (B, Lk)" if kind == 1 else "the documents kind (B, Lq + Lk)"
        raise ValueError(f"triton attention: rank must be int32 ({B}, {width}) on "
                         f"{q.device} for {what}, got {_describe(rank)}")
    if not 0 <= q_split <= Lq:
        raise ValueError(f"triton attention: q_split must be in [0, {Lq}], got {q_split}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"triton attention: dropout_p must be in [0, 1), got {dropout_p}")
    if dropout_p > 0 and (not isinstance(seed, torch.Tensor) or seed.numel() != 1):
        raise ValueError(f"triton attention: dropout needs seed as a 1-element int64 tensor, "
                         f"got {_describe(seed)}")


def _check_score_mods(q, k, rel_bias, softcap) -> None:
    """The op schema's modifiers: softcap a finite float >= 0 (0 = off), rel_bias None or
    float32 (H, Lq + Lk - 1) on q's device."""
    if isinstance(softcap, bool) or not isinstance(softcap, (int, float)) \
            or not math.isfinite(softcap) or softcap < 0:
        raise ValueError(f"triton attention: softcap must be a finite float >= 0 (0 = off), "
                         f"got {softcap!r}")
    if rel_bias is None:
        return
    want = (q.shape[1], q.shape[2] + k.shape[2] - 1)
    if want[1] >= 2 ** 31:
        raise ValueError(f"triton attention: rel_bias has Lq + Lk - 1 = {want[1]} columns, "
                         f"beyond the kernels' int32 index")
    if not isinstance(rel_bias, torch.Tensor) or rel_bias.dtype != torch.float32 \
            or tuple(rel_bias.shape) != want or rel_bias.device != q.device:
        raise ValueError(f"triton attention: rel_bias must be float32 (H, Lq + Lk - 1) = {want} "
                         f"on {q.device}, got {_describe(rel_bias)}")


def _alert_nondeterministic_rel_grad(q: torch.Tensor) -> None:
    """d_rel_bias is summed with float32 atomics on a GPU (the interpreter runs programs in
    order): under torch.use_deterministic_algorithms, raise (or warn with warn_only) as torch's
    own nondeterministic ops do."""
    if q.device.type != "cuda" or not torch.are_deterministic_algorithms_enabled():
        return
    msg = ("triton attention backward with rel_bias: d_rel_bias is accumulated with atomic "
           "adds, which is not deterministic (dq/dk/dv are)")
    if torch.is_deterministic_algorithms_warn_only_enabled():
        import warnings
        warnings.warn(msg)
    else:
        raise RuntimeError(msg + "; torch.use_deterministic_algorithms(True) is set")


def _mod_args(rel_bias: Optional[torch.Tensor], softcap: float, placeholder: torch.Tensor):
    """Kernel arguments of the score modifiers: (REL tensor, softcap, 1 / softcap, rel_len)
    and the constexpr flags (HAS_SOFTCAP, HAS_REL_BIAS). Without rel_bias, `placeholder`
    stands in for the never-read table pointer."""
    softcap = float(softcap)
    inv = 1.0 / softcap if softcap > 0 else 0.0
    if rel_bias is None:
        return (placeholder, softcap, inv, 0), dict(HAS_SOFTCAP=softcap > 0, HAS_REL_BIAS=False)
    rel = rel_bias.contiguous()
    return (rel, softcap, inv, rel.shape[1]), dict(HAS_SOFTCAP=softcap > 0, HAS_REL_BIAS=True)


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor(dtype={x.dtype}, shape={tuple(x.shape)}, device={x.device})"
    return type(x).__name__


def use_tf32(q: torch.Tensor) -> bool:
    """Whether fp32 attention on q's device runs its dots on TF32 tensor cores: only CUDA
    float32 inputs, and only when torch allows TF32 for float32 matmuls
    (``torch.backends.cuda.matmul.allow_tf32`` or ``torch.set_float32_matmul_precision``
    "high"/"medium"); the default ("highest") keeps IEEE fp32 products."""
    if q.dtype != torch.float32 or q.device.type != "cuda":
        return False
    return bool(torch.backends.cuda.matmul.allow_tf32) \
        or torch.get_float32_matmul_precision() != "highest"


def _i32(x: int) -> int:
    """A 32-bit pattern as a signed int32 value (Triton types kernel ints by value)."""
    x &= 0xFFFFFFFF
    return x - (1 << 32) if x >= (1 << 31) else x


def _dropout_args(dropout_p: float, seed: Optional[torch.Tensor]):
    """(keep_scale, threshold, seed_lo, seed_hi) with threshold = floor(p 2^32) as int32 bits
    (janus_kernels.dropout.drop_threshold)."""
    if dropout_p <= 0:
        return 1.0, 0, 0, 0
    from ..dropout import drop_threshold
    s = int(seed.reshape(-1)[0]) & 0xFFFFFFFFFFFFFFFF
    return 1.0 / (1.0 - dropout_p), _i32(drop_threshold(dropout_p)), _i32(s), _i32(s >> 32)


def _strides(t: torch.Tensor):
    return tuple(t.stride())


def _device_ctx(t: torch.Tensor):
    import contextlib
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def _mask_args(params, rank, k):
    params = params.contiguous()
    if rank is None:  # never read for the window kind; any int32 pointer will do
        return params, params, 0
    rank = rank.contiguous()
    return params, rank, rank.stride(0)


# ========================================================================== launchers
#: CUDA grid limits: x up to 2^31 - 1 blocks, y and z up to 65535.
GRID_X_MAX = 2 ** 31 - 1
GRID_YZ_MAX = 65535


def launch_grid(n_heads: int, n_tiles: int) -> Tuple[int, int]:
    """Grid of the attention kernels: (batch * heads, tiles). The product B * H is the
    dimension that grows with the batch (batched inference easily passes 65535), so it goes
    on x; the tile count on y is bounded by the length (65535 tiles of >= 16 rows)."""
    if n_heads > GRID_X_MAX:
        raise ValueError(f"triton attention: batch * heads = {n_heads} exceeds the CUDA grid "
                         f"limit {GRID_X_MAX}; split the batch")
    if n_tiles > GRID_YZ_MAX:
        raise ValueError(f"triton attention: {n_tiles} tiles along the sequence exceed the "
                         f"CUDA grid limit {GRID_YZ_MAX}; the sequence is too long")
    return n_heads, n_tiles


def _stream_row_tiles(Lq: int, q_split: int, bm: int) -> int:
    """Row tiles of the two streams (a tile never straddles the stream boundary)."""
    return triton.cdiv(q_split, bm) + triton.cdiv(Lq - q_split, bm)


def attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, params: torch.Tensor,
                  rank: Optional[torch.Tensor], q_split: int, kind: int, scale: float,
                  dropout_p: float, seed: Optional[torch.Tensor],
                  rel_bias: Optional[torch.Tensor] = None, softcap: float = 0.0
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Forward: ``(out (B, H, Lq, d) in q's dtype, lse (B, H, Lq) float32)``."""
    _check_common(q, k, v, params, rank, q_split, kind, dropout_p, seed)
    _check_score_mods(q, k, rel_bias, softcap)
    B, H, Lq, d = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    # every in-tensor row is written by the kernel (rows that see nothing: 0 and -inf)
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = torch.empty((B, H, Lq), dtype=torch.float32, device=q.device)
    if B * H * Lq == 0:
        return out, lse
    d_pad = head_dim_pad(d)
    tf32 = use_tf32(q)
    (rel, cap, inv_cap, rel_len), flags = _mod_args(rel_bias, softcap, lse)
    mods = flags["HAS_SOFTCAP"] or flags["HAS_REL_BIAS"]
    bm, bn, warps, stages = get_config("fwd", d_pad, q.dtype, tf32, mods)
    keep_scale, thr, s_lo, s_hi = _dropout_args(dropout_p, seed)
    params, rank_t, rank_stride = _mask_args(params, rank, k)
    grid = launch_grid(B * H, _stream_row_tiles(Lq, q_split, bm))
    with _device_ctx(q):
        _attn_fwd[grid](q, k, v, out, lse, params, rank_t, rel, *_strides(q), *_strides(k),
                        *_strides(v), *_strides(out), rank_stride, H, H // Hkv, Lq, Lk,
                        q_split, float(scale) * LOG2E, keep_scale, thr, s_lo, s_hi,
                        float(scale), cap, inv_cap, rel_len,
                        D=d, D_PAD=d_pad, BLOCK_M=bm, BLOCK_N=bn, KIND=int(kind),
                        DROPOUT=dropout_p > 0, TF32=tf32, num_warps=warps,
                        num_stages=stages, **flags)
    return out, lse


def attention_bwd(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  out: torch.Tensor, lse: torch.Tensor, params: torch.Tensor,
                  rank: Optional[torch.Tensor], q_split: int, kind: int, scale: float,
                  dropout_p: float, seed: Optional[torch.Tensor],
                  rel_bias: Optional[torch.Tensor] = None, softcap: float = 0.0
                  ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward: ``(dq, dk, dv, d_rel_bias)`` in the dtypes of q, k, v (dK/dV summed over GQA
    groups); d_rel_bias is a (0,) float32 tensor without rel_bias."""
    _check_common(q, k, v, params, rank, q_split, kind, dropout_p, seed)
    _check_score_mods(q, k, rel_bias, softcap)
    if rel_bias is not None:
        _alert_nondeterministic_rel_grad(q)
    # float32 atomics accumulate it (dK/dV kernel): zero-initialised, unordered sums on a GPU
    d_rel = torch.zeros((0,) if rel_bias is None else tuple(rel_bias.shape),
                        dtype=torch.float32, device=q.device)
    B, H, Lq, d = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    for name, t in (("dout", dout), ("out", out)):
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(q.shape) \
                or t.device != q.device:
            raise ValueError(f"triton attention: {name} must have q's shape {tuple(q.shape)} "
                             f"on {q.device}, got {_describe(t)}")
    if not isinstance(lse, torch.Tensor) or tuple(lse.shape) != (B, H, Lq) \
            or lse.dtype != torch.float32 or lse.device != q.device:
        raise ValueError(f"triton attention: lse must be float32 ({B}, {H}, {Lq}) on {q.device}, "
                         f"got {_describe(lse)}")
    if B * H * Lq * Lk == 0:  # nothing attends: all gradients are zero
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v), d_rel
    # every element is written by the kernels (unseen keys/rows get exact zeros)
    dq = torch.empty_like(q, memory_format=torch.contiguous_format)
    dk = torch.empty_like(k, memory_format=torch.contiguous_format)
    dv = torch.empty_like(v, memory_format=torch.contiguous_format)
    dout = dout.to(q.dtype)
    out = out.to(q.dtype)
    lse = lse.contiguous()
    d_pad = head_dim_pad(d)
    acc_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    delta = torch.empty((B, H, Lq), dtype=acc_dtype, device=q.device)
    keep_scale, thr, s_lo, s_hi = _dropout_args(dropout_p, seed)
    params, rank_t, rank_stride = _mask_args(params, rank, k)
    qk_scale = float(scale) * LOG2E
    (rel, cap, inv_cap, rel_len), flags = _mod_args(rel_bias, softcap, delta)
    d_rel_ptr = d_rel if rel_bias is not None else delta   # never written without rel_bias
    common = dict(D=d, D_PAD=d_pad, KIND=int(kind), DROPOUT=dropout_p > 0, TF32=use_tf32(q),
                  **flags)
    with _device_ctx(q):
        bm, _, warps, stages = get_config("pre", d_pad, q.dtype)
        _bwd_preprocess[launch_grid(B * H, triton.cdiv(Lq, bm))](
            out, dout, delta, *_strides(out), *_strides(dout), H, Lq,
            D=d, D_PAD=d_pad, BLOCK_M=bm, num_warps=warps, num_stages=stages)
        mods = flags["HAS_SOFTCAP"] or flags["HAS_REL_BIAS"]
        bm, bn, warps, stages = get_config("dkdv", d_pad, q.dtype, common["TF32"], mods)
        _attn_bwd_dkdv[launch_grid(B * Hkv, triton.cdiv(Lk, bn))](
            q, k, v, dout, lse, delta, dk, dv, params, rank_t, rel, d_rel_ptr, *_strides(q),
            *_strides(k), *_strides(v), *_strides(dout), *_strides(dk), *_strides(dv),
            rank_stride, H, H // Hkv, Lq, Lk, q_split, qk_scale, float(scale), keep_scale, thr,
            s_lo, s_hi, cap, inv_cap, rel_len, BLOCK_M=bm, BLOCK_N=bn, num_warps=warps,
            num_stages=stages, **common)
        bm, bn, warps, stages = get_config("dq", d_pad, q.dtype, common["TF32"], mods)
        grid = launch_grid(B * H, _stream_row_tiles(Lq, q_split, bm))
        _attn_bwd_dq[grid](
            q, k, v, dout, lse, delta, dq, params, rank_t, rel, *_strides(q), *_strides(k),
            *_strides(v), *_strides(dout), *_strides(dq), rank_stride,
            H, H // Hkv, Lq, Lk, q_split, qk_scale, float(scale), keep_scale, thr, s_lo, s_hi,
            cap, inv_cap, rel_len, BLOCK_M=bm, BLOCK_N=bn, num_warps=warps,
            num_stages=stages, **common)
    return dq, dk, dv, d_rel
