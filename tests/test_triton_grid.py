"""Launch grids of the Triton attention kernels fit the CUDA limits (x < 2^31, y/z <= 65535)
for batched inference with B * H > 65535. The interpreter has no grid limits, so the kernels
are replaced by recorders: the test checks every grid a launcher asks for, without running
a kernel. Also: when the fp32 kernels use TF32 dots (use_tf32)."""
import os
from typing import List, Tuple

import pytest
import torch

from janus_kernels import masks

triton = pytest.importorskip("triton")
from janus_kernels.triton import attention as tri  # noqa: E402

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1"
                                and not torch.cuda.is_available(),
                                reason="needs TRITON_INTERPRET=1 or a GPU")

KERNELS = ("_attn_fwd", "_bwd_preprocess", "_attn_bwd_dkdv", "_attn_bwd_dq")


class _GridRecorder:
    """Stands in for a @triton.jit kernel: `kernel[grid](...)` records the grid."""

    def __init__(self, name: str, grids: List[Tuple[str, tuple]]):
        self.name, self.grids = name, grids

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.grids.append((self.name, tuple(grid)))


@pytest.fixture
def grids(monkeypatch) -> List[Tuple[str, tuple]]:
    rec: List[Tuple[str, tuple]] = []
    for name in KERNELS:
        monkeypatch.setattr(tri, name, _GridRecorder(name, rec))
    return rec


def _assert_within_cuda_limits(grids) -> None:
    assert {name for name, _ in grids} == set(KERNELS)
    for name, grid in grids:
        assert 1 <= grid[0] <= tri.GRID_X_MAX, (name, grid)
        for dim in grid[1:]:
            assert 1 <= dim <= tri.GRID_YZ_MAX, (name, grid)


@pytest.mark.parametrize("B,H,Hkv", [(70000, 1, 1), (4100, 16, 16), (8200, 16, 2)])
def test_large_batch_times_heads_fits_the_grid(grids, B, H, Hkv):
    dev = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
    L, d = 3, 16
    q = torch.zeros(B, H, L, d, device=dev, dtype=torch.float16)
    k = torch.zeros(B, Hkv, L, d, device=dev, dtype=torch.float16)
    m = masks.causal_mask([L] * B).to(dev)
    out, lse = tri.attention_fwd(q, k, k, m.params, None, m.q_split, int(m.kind), 0.25, 0.0,
                                 None)
    tri.attention_bwd(out, q, k, k, out, lse, m.params, None, m.q_split, int(m.kind), 0.25,
                      0.0, None)
    _assert_within_cuda_limits(grids)
    assert max(g[0] for _, g in grids) >= B * Hkv   # the big dimension is x


def test_launch_grid_rejects_what_cannot_launch():
    assert tri.launch_grid(2 ** 20, 7) == (2 ** 20, 7)
    with pytest.raises(ValueError, match="batch \\* heads"):
        tri.launch_grid(2 ** 31, 1)
    with pytest.raises(ValueError, match="tiles along the sequence"):
        tri.launch_grid(1, 65536)


# ========================================================== fp32 dot precision (TF32)
@pytest.mark.parametrize("precision,expected", [("highest", False), ("high", True),
                                                ("medium", True)])
def test_tf32_follows_torch_float32_matmul_precision(monkeypatch, precision, expected):
    """fp32 CUDA inputs take TF32 dots exactly when torch allows TF32 for fp32 matmuls;
    other dtypes and CPU tensors never do. (A CUDA tensor is faked: only .dtype and
    .device are read.)"""
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        class _FakeCuda:
            device = torch.device("cuda", 0)
            dtype = torch.float32
        assert tri.use_tf32(_FakeCuda()) is expected
        _FakeCuda.dtype = torch.bfloat16
        assert tri.use_tf32(_FakeCuda()) is False
        assert tri.use_tf32(torch.zeros(1)) is False
    finally:
        torch.set_float32_matmul_precision(old)
