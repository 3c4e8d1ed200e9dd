"""Build checks for the CUDA loss kernels (csrc/cuda/loss.cu, janus_loss.cu, loss_glue.cpp) on
a machine without a GPU: nvcc compiles the torch-free kernels for sm_80 and sm_90 with the
setup.py flags and ptxas reports no spills; g++ compiles the torch glue against the CUDA
headers. The kernels themselves run under the CPU emulation in test_cuda_emu_loss.py."""
import glob
import os
import re
import shutil
import subprocess

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NVCC = shutil.which("nvcc")
pytestmark = [pytest.mark.compile_check,
              pytest.mark.skipif(NVCC is None, reason="nvcc not found")]


def _cuda_include():
    homes = [os.environ.get("CUDA_HOME", ""), os.path.dirname(os.path.dirname(
        os.path.realpath(NVCC or "")))] + sorted(glob.glob("/usr/local/cuda*"))
    for h in homes:
        if h and os.path.exists(os.path.join(h, "include", "cuda_runtime_api.h")):
            return os.path.join(h, "include")
    return None


# kernels per file: loss.cu 4 x 4 dtypes (+ the CE forward's smoothing variant); janus_loss.cu
# 4 x 4 dtypes
KERNEL_COUNTS = {"loss.cu": 4 * 4 + 4, "janus_loss.cu": 4 * 4}


@pytest.mark.parametrize("src", list(KERNEL_COUNTS))
def test_loss_cu_compiles_without_spills(tmp_path, src):
    cmd = [NVCC, "-O3", "-std=c++20", "--use_fast_math", "-U__CUDA_NO_HALF_OPERATORS__",
           "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
           "-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90",
           "-Xptxas", "-v,-warn-spills", "-c", os.path.join(ROOT, "csrc/cuda", src),
           "-o", str(tmp_path / "loss.o")]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    spills = re.findall(r"(\d+) bytes spill stores", p.stderr)
    kernels = re.findall(r"Compiling entry function '(\w+)' for 'sm_(\d+)'", p.stderr)
    assert len(kernels) == 2 * KERNEL_COUNTS[src], kernels
    assert spills and all(s == "0" for s in spills), p.stderr[-3000:]
    assert "Registers are spilled" not in p.stderr


def test_loss_glue_compiles(tmp_path):
    inc = _cuda_include()
    if inc is None:
        pytest.skip("CUDA headers not found")
    ti = os.path.join(os.path.dirname(torch.__file__), "include")
    cmd = ["g++", "-std=c++20", "-fsyntax-only", "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE",
           f"-I{ti}", f"-I{ti}/torch/csrc/api/include", f"-I{inc}",
           f"-I{os.path.join(ROOT, 'csrc/cuda')}", f"-I{os.path.join(ROOT, 'csrc/include')}",
           os.path.join(ROOT, "csrc/cuda/loss_glue.cpp")]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
