"""Triton kernels (GPU; run under TRITON_INTERPRET=1 on CPU in tests)."""
