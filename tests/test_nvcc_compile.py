"""Compile checks of the CUDA backend without a GPU (marker compile_check; skipped without nvcc):

* every csrc/cuda/*.cu with nvcc for sm_80 and sm_90 with the real build's flags: no register
  spills, no local-memory stack frame, shared memory within the architecture's limit; the
  per-kernel table (registers, spills, shared memory) is written to build/cuda_report.json
  and printed (pytest -s);
* the torch glue (csrc/cuda/attention_glue.cpp) with g++ against the CPU torch headers plus
  -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE (a CUDAExtension cannot link against a CPU torch).
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import _cuda_emu_lib as emu_lib
from janus_kernels import cuda_report

pytestmark = [
    pytest.mark.compile_check,
    pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not found"),
]

ROOT = Path(__file__).resolve().parents[1]
# Opt-in dynamic shared memory per block (cudaFuncAttributeMaxDynamicSharedMemorySize).
SMEM_LIMIT = {"sm_80": 163 * 1024, "sm_90": 227 * 1024}


@pytest.fixture(scope="module")
def report():
    rows = cuda_report.compile_report((80, 90))
    out = ROOT / "build" / "cuda_report.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps([dataclasses.asdict(r) for r in rows], indent=1))
    print("\n" + cuda_report.format_table(rows))
    return rows


def test_every_attention_kernel_is_built(report):
    names = {(r.arch, r.kernel.replace("__nv_bfloat16", "bf16").replace("__half", "f16"))
             for r in report}
    for arch in ("sm_80", "sm_90"):
        for kind in ("fwd", "bwd_dkdv", "bwd_dq"):
            for dt in ("f16", "bf16"):
                for d in (64, 128):
                    assert any(a == arch and f"attention_{kind}_kernel<{dt}, {d}>" in k
                               for a, k in names), (arch, kind, dt, d)


def test_no_spills_no_stack(report):
    bad = [r for r in report if r.spill_stores or r.spill_loads or r.stack_frame]
    assert not bad, "\n" + cuda_report.format_table(bad)
    assert all(r.registers <= 255 for r in report)


def test_shared_memory_fits(report):
    for r in report:
        total = r.static_smem + (r.dyn_smem or 0)
        assert total <= SMEM_LIMIT[r.arch], f"{r.kernel} on {r.arch}: {total} B of shared memory"
        if "attention_" in r.kernel and "_kernel<" in r.kernel and "delta" not in r.kernel:
            assert r.dyn_smem is not None, f"{r.kernel}: no launch geometry in cuda_report"


def test_report_geometry_matches_the_kernels():
    """cuda_report's launch table against janus_cuda_attention_config of the .cu files (built
    for the CPU emulation: the same constexpr configuration)."""
    if emu_lib.cuda_include_dir() is None or shutil.which("g++") is None:
        pytest.skip("needs g++ and the CUDA headers")
    import ctypes
    lib = ctypes.CDLL(str(emu_lib.build()))
    vals = [ctypes.c_int() for _ in range(4)]
    for (kernel, d), geo in cuda_report.ATTENTION_GEOMETRY.items():
        which = 0 if "fwd" in kernel else 1 if "dkdv" in kernel else 2
        assert lib.janus_cuda_attention_config(which, d, *map(ctypes.byref, vals)) == 0
        got = dict(block_m=vals[0].value, block_n=vals[1].value, threads=vals[2].value,
                   dyn_smem=vals[3].value)
        assert got == geo, (kernel, d)


def test_glue_compiles_against_cpu_torch(tmp_path):
    from torch.utils import cpp_extension as ce
    inc = emu_lib.cuda_include_dir()
    if inc is None:
        pytest.skip("CUDA headers not found")
    cxx = shutil.which("g++") or pytest.skip("g++ not found")
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    cmd = [cxx, "-std=c++20", "-O0", "-fPIC", "-c",
           "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE", f"-D_GLIBCXX_USE_CXX11_ABI={abi}", "-Wall",
           *[f"-I{p}" for p in ce.include_paths()], f"-I{inc}", f"-I{ROOT / 'csrc' / 'include'}",
           str(ROOT / "csrc" / "cuda" / "attention_glue.cpp"), "-o", str(tmp_path / "glue.o")]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-6000:]
    assert "warning" not in r.stderr, r.stderr[-3000:]
    undefined = subprocess.run(["nm", "-u", str(tmp_path / "glue.o")], capture_output=True,
                               text=True).stdout
    for sym in ("janus_cuda_attention_fwd", "janus_cuda_attention_bwd"):
        assert sym in undefined   # resolved by the .cu objects in the CUDA build


def test_report_cli_json(report, tmp_path, monkeypatch, capsys):
    """`python -m janus_kernels.cuda_report --json` (on the rows compiled above)."""
    monkeypatch.setattr(cuda_report, "compile_report", lambda archs: report)
    out = tmp_path / "r.json"
    assert cuda_report.main(["--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert len(rows) == len(report) and {"registers", "spill_stores", "dyn_smem"} <= set(rows[0])
    assert "attention_fwd_kernel" in capsys.readouterr().out
