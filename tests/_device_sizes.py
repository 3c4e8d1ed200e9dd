"""Where the kernel tests run and how big: compiled Triton / CUDA kernels on a GPU at real
sizes (long tile loops, key-tile gap jumps, many row blocks, d = 256), or the Triton
interpreter / CPU emulation with tiny shapes (milliseconds per tile iteration)."""
from __future__ import annotations

import os

import torch

#: Triton runs interpreted (conftest sets TRITON_INTERPRET=1 when there is no CUDA device).
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
#: Device of the Triton tests' tensors.
TRITON_DEVICE = "cpu" if INTERPRET else "cuda"
#: Real-size cases run: compiled kernels on a GPU.
REAL_SIZES = not INTERPRET and torch.cuda.is_available()
