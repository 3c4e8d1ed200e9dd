"""Fixes for the Triton interpreter (3.6-3.9): bf16 tl.dot multiplies raw uint16 bit
patterns, and fp32->bf16 casts truncate instead of rounding to nearest even."""
import os


def apply() -> None:
    if os.environ.get("TRITON_INTERPRET") != "1":
        return
    try:
        import numpy as np
        import triton.language as tl
        from triton.runtime import interpreter as interp
    except ImportError:
        return
    builder = interp.InterpreterBuilder
    if getattr(builder, "_janus_bf16_fix", False):
        return

    def bf16_to_f32(d):
        return (d.astype(np.uint32) << 16).view(np.float32)

    def f32_to_bf16_rne(d):
        u = np.ascontiguousarray(d, dtype=np.float32).view(np.uint32)
        out = ((u + (0x7FFF + ((u >> 16) & 1))) >> 16).astype(np.uint16)
        out[np.isnan(d)] = 0x7FC0
        return out

    orig_dot, orig_cast = builder.create_dot, builder.cast_impl

    def create_dot(self, a, b, d, *args):
        if a.dtype.scalar == tl.bfloat16:
            a = interp.TensorHandle(bf16_to_f32(a.data), tl.float32)
        if b.dtype.scalar == tl.bfloat16:
            b = interp.TensorHandle(bf16_to_f32(b.data), tl.float32)
        return orig_dot(self, a, b, d, *args)

    def cast_impl(self, src, dst):
        if src.dtype.scalar == tl.float32 and dst.scalar == tl.bfloat16:
            return interp.TensorHandle(f32_to_bf16_rne(src.data), dst.scalar)
        return orig_cast(self, src, dst)

    builder.create_dot, builder.cast_impl = create_dot, cast_impl
    builder._janus_bf16_fix = True
