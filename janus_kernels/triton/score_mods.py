"""Score modifiers of the Triton attention kernels (softcap, relative bias) as ``@triton.jit``
helpers, the kernel spelling of ``attention(..., softcap=, rel_bias=)`` (the tables:
``janus_kernels/score_mods.py``)::

    s = scale q.k;   s = softcap tanh(s / softcap)  (softcap > 0);   s += rel_bias[h, j-i+Lq-1]

then the mask and the softmax as before. The kernels work in base 2 (``exp2``): without
modifiers they fold ``scale log2(e)`` into one multiply of the dot (:func:`score_tile` keeps
exactly that when both flags are off, so the plain path costs nothing); with modifiers the
tile becomes the modified score in natural units and is then rescaled by ``log2(e)``.

Backward: with ``dS`` the gradient w.r.t. the final score (``p (dP - delta)``), the bias
table gets ``d_rel_bias[h, t] += dS`` over every ``(i, j)`` of diagonal ``t``
(:func:`accumulate_rel_grad`, float32 atomics: on a GPU the summation order, and so the last
bits of ``d_rel_bias``, vary from run to run), and the dots take
``dS_pre = dS (1 - tanh^2)`` (:func:`pre_softcap_grad`).
"""
import triton
import triton.language as tl

_LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _tanh(x):
    """tanh from exp2 (portable across Triton versions and the interpreter, which has no
    libdevice): 1 - 2 / (1 + e^{2x}); saturates to +-1 without NaN for large |x|. The
    absolute error (a few ulp of 1) is what the score needs: the result is scaled by
    softcap and compared with scores of order softcap."""
    return 1.0 - 2.0 / (1.0 + tl.math.exp2(x * (2.0 * _LOG2E)))


@triton.jit
def rel_index(offs_i, offs_j, Lq, TRANS: tl.constexpr):
    """Column ``j - i + Lq - 1`` of the bias table for a (rows x keys) tile, or (keys x rows)
    if TRANS; ``offs_i`` are global query rows (stream start included)."""
    if TRANS:
        t = offs_j[:, None] - offs_i[None, :] + (Lq - 1)
    else:
        t = offs_j[None, :] - offs_i[:, None] + (Lq - 1)
    return t


@triton.jit
def score_tile(raw, offs_i, offs_j, Lq, qk_scale, scale, softcap, inv_softcap, rel_ptr,
               rel_len, HAS_SOFTCAP: tl.constexpr, HAS_REL_BIAS: tl.constexpr,
               TRANS: tl.constexpr):
    """Score tile in log2 units from the raw dot ``raw`` = q.k, and the tanh tile the
    backward needs (0.0 without softcap). ``rel_ptr`` points at head h's row of the bias
    table; entries outside it (lanes past Lq / Lk, masked by the caller) read 0."""
    t = 0.0
    if HAS_SOFTCAP or HAS_REL_BIAS:
        s = raw * scale
        if HAS_SOFTCAP:
            t = _tanh(s * inv_softcap)
            s = softcap * t
        if HAS_REL_BIAS:
            idx = rel_index(offs_i, offs_j, Lq, TRANS)
            bias = tl.load(rel_ptr + idx, mask=(idx >= 0) & (idx < rel_len), other=0.0)
            s = s + bias.to(s.dtype)
        s = s * _LOG2E
    else:
        s = raw * qk_scale
    return s, t


@triton.jit
def pre_softcap_grad(ds, t, HAS_SOFTCAP: tl.constexpr):
    """Gradient w.r.t. the scaled score before the softcap: dS (1 - tanh^2)."""
    if HAS_SOFTCAP:
        ds = ds * (1.0 - t * t)
    return ds


@triton.jit
def accumulate_rel_grad(ds, offs_i, offs_j, valid, Lq, rel_len, drel_ptr,
                        TRANS: tl.constexpr):
    """d_rel_bias[h, j - i + Lq - 1] += dS (float32 atomics) over the lanes ``valid``;
    ``drel_ptr`` points at head h's row."""
    idx = rel_index(offs_i, offs_j, Lq, TRANS)
    ok = valid & (idx >= 0) & (idx < rel_len)
    tl.atomic_add(drel_ptr + idx, ds.to(tl.float32), mask=ok, sem="relaxed")
