"""Test harness. Without a CUDA device, Triton runs interpreted on CPU (TRITON_INTERPRET=1 is
set before any kernel module is imported, since @triton.jit reads it at decoration time) with
the interpreter's bf16 fixes, and the tests pick tiny shapes. With a CUDA device the Triton
kernels are compiled and the tests run them at real sizes (tests/_device_sizes.py); set
TRITON_INTERPRET=1 yourself to force the interpreter there."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import pytest  # noqa: E402

from _triton_interp_fix import apply as _apply_triton_fix  # noqa: E402

from janus_kernels import cpu_isa  # noqa: E402

_apply_triton_fix()   # a no-op unless TRITON_INTERPRET=1

#: every CPU ISA level this machine can run (e.g. avx2, avx512, amx on a Sapphire Rapids);
#: suites that use the ``cpu_isa_level`` fixture run once per level
CPU_LEVELS = cpu_isa.available_levels()


@pytest.fixture(params=CPU_LEVELS or [None], ids=lambda lv: f"isa={lv or 'none'}")
def cpu_isa_level(request):
    """Run the test with the compiled CPU kernels capped at one ISA level."""
    if request.param is None:
        yield None
        return
    with cpu_isa.cap_cpu_isa(request.param):
        yield request.param


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models: intra-op threads only add barrier waits on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def fused_calls(monkeypatch):
    """Counts calls into the fused kernel, to prove the drop-in does not fall back."""
    import janus_kernels.nn as jnn
    calls = []
    real = jnn.attention

    def counting(*a, **k):
        calls.append(a[3].family)
        return real(*a, **k)
    monkeypatch.setattr(jnn, "attention", counting)
    return calls


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
