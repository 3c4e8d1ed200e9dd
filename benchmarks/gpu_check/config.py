"""Sizes of the GPU check: real ones on a GPU, tiny ones for the dry run on CPU."""
from __future__ import annotations

import dataclasses
from typing import List, Tuple

import torch

import janus_kernels as jk


@dataclasses.dataclass(frozen=True)
class Setup:
    dry: bool
    device: str
    dtype: torch.dtype           # the checks' half-precision dtype (fp32 on CPU: no AMX needed)
    tol: float                   # max |err| / max |ref| against the fp32 dense reference
    L: int                       # correctness length (several tiles of every kernel)
    grid: Tuple[int, int, int]   # (B, H, L) with B * H > 65535 on a GPU
    big: Tuple[int, int, int, int]   # (H, L, d, window): H * L * d >= 2^31 on a GPU
    det_L: int
    compile_L: int
    compile_backend: str         # torch.compile backend
    loss: Tuple[int, int, int]   # (N, M, V) of janus_loss
    stream_L: int


def make_setup(dry: bool) -> Setup:
    if dry:
        return Setup(True, "cpu", torch.float32, 1e-4, 20, (3, 2, 9), (2, 64, 16, 8), 12, 16,
                     "aot_eager", (9, 4, 100), 0)
    return Setup(False, "cuda", torch.bfloat16, 3e-2, 1500, (4100, 16, 16),
                 (16, 1 << 20, 128, 64), 1024, 300, "inductor", (301, 97, 32003), 2048)


def attention_backends(device: str) -> List[str]:
    """The compiled attention backends usable on `device` (names as the package spells them:
    "cpp" / "cpu" / "cuda" and "triton"), without the dense reference."""
    return [name for name, status in jk.available_backends(device).items()
            if status == "yes" and name != "reference"]


def janus_batch_lengths(B: int, nmax: int, seed: int = 0):
    """(U, M) of the benchmark batch: N uniform in [Nmax/2, Nmax], M = int(0.55 N)."""
    from benchmarks.gpu_readiness import janus_batch
    return janus_batch(B, nmax, seed)
