"""The per-device chunking policy of fused_linear_janus_loss (janus_kernels/_chunking.py)."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from janus_kernels import _chunking as C


def _bytes(rows, V, D, dtype):
    return C._chunk_bytes_per_row(V, D, dtype.itemsize) * rows


@given(V=st.integers(1, 300_000), D=st.integers(1, 8192),
       dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16, torch.float64]))
@settings(max_examples=200, deadline=None)
def test_cpu_chunk_fits_the_cache_budget(V, D, dtype):
    rows = C.fused_loss_chunk_rows(V, D, dtype, "cpu")
    assert rows >= 8 and rows % 8 == 0
    if rows > 8:   # only the minimum may exceed the budget (huge vocabularies)
        assert _bytes(rows, V, D, dtype) <= C.CPU_BUDGET_BYTES
        assert _bytes(rows + 8, V, D, dtype) > C.CPU_BUDGET_BYTES   # and it is filled


class _Props:
    def __init__(self, total):
        self.total_memory = total


@pytest.mark.parametrize("total_gib,budget", [(80, C.CUDA_BUDGET_MAX_BYTES),
                                              (12, 12 << 25), (4, C.CUDA_BUDGET_MIN_BYTES)])
def test_cuda_chunk_is_large_and_scales_with_the_device(monkeypatch, total_gib, budget):
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: _Props(total_gib << 30))
    rows = C.fused_loss_chunk_rows(32000, 512, torch.bfloat16, torch.device("cuda", 0))
    assert rows % 64 == 0
    assert _bytes(rows, 32000, 512, torch.bfloat16) <= budget
    assert _bytes(rows + 64, 32000, 512, torch.bfloat16) > budget
    # at the paper's vocabulary a GPU step is a few chunks, not ~100 of 131 rows
    assert rows >= 512


def test_gpu_chunks_are_larger_than_cpu_chunks(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: _Props(80 << 30))
    for V in (1000, 32000, 250_000):
        assert C.fused_loss_chunk_rows(V, 512, torch.bfloat16, "cuda:0") \
            > C.fused_loss_chunk_rows(V, 512, torch.bfloat16, "cpu")


@pytest.mark.parametrize("kwargs,match", [
    (dict(vocab=0), "vocab"), (dict(vocab=2.5), "vocab"), (dict(vocab=True), "vocab"),
    (dict(hidden=-1), "hidden"), (dict(dtype=torch.int64), "dtype"), (dict(dtype="f32"), "dtype"),
])
def test_bad_arguments_name_the_argument(kwargs, match):
    args = dict(vocab=100, hidden=16, dtype=torch.float32, device="cpu")
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        C.fused_loss_chunk_rows(**args)
