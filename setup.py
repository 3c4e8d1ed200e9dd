"""Build janus_kernels._C: a CppExtension on CPU-only torch, a CUDAExtension (CPU + CUDA
sources) when torch has CUDA and a toolkit is present.

Environment:
  JANUS_WITH_CUDA=auto|1|0   build the CUDA sources (auto: torch.version.cuda and nvcc found)
  JANUS_PORTABLE=1           generic x86-64 build (no -march=native, no AVX-512 defines)
  MAX_JOBS                   parallel compile jobs (default: number of CPUs)
Install with `pip install --no-build-isolation .` so the build uses the torch you have.
"""
import glob
import os
import subprocess
import sys
import warnings

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils import cpp_extension as ce
except ImportError:  # pragma: no cover - the build needs torch already installed
    sys.exit("janus-kernels: install torch first, then `pip install --no-build-isolation .`")

ROOT = os.path.dirname(os.path.abspath(__file__))


def _cpu_flags():
    """ISA flags for the build machine: at::vec only uses 512-bit vectors when the
    CPU_CAPABILITY_AVX512 defines are set (-march=native alone leaves Vectorized<float> at 8)."""
    if os.environ.get("JANUS_PORTABLE", "0") == "1" or not sys.platform.startswith("linux"):
        return []
    flags = ["-march=native"]
    try:
        cpuinfo = open("/proc/cpuinfo").read()
    except OSError:
        cpuinfo = ""
    if all(f in cpuinfo for f in ("avx512f", "avx512bw", "avx512vl", "avx512dq")):
        flags += ["-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512",
                  "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma"]
    elif "avx2" in cpuinfo:
        flags += ["-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2", "-mavx2", "-mfma"]
    return flags


def _want_cuda():
    mode = os.environ.get("JANUS_WITH_CUDA", "auto").lower()
    if mode in ("0", "false", "no"):
        return False
    have = torch.version.cuda is not None and ce.CUDA_HOME is not None
    if mode in ("1", "true", "yes"):
        if not have:
            raise RuntimeError("JANUS_WITH_CUDA=1 but torch has no CUDA build or no CUDA "
                               "toolkit (nvcc) was found; set CUDA_HOME or use JANUS_WITH_CUDA=0")
        return True
    if torch.version.cuda is not None and ce.CUDA_HOME is None:
        warnings.warn("janus-kernels: torch has CUDA but nvcc was not found; building the CPU "
                      "extension only (the Triton backend still works on GPU)")
    return have


def extensions():
    include = [os.path.join(ROOT, "csrc", "include")]
    cpu_srcs = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    cxx = ["-O3", "-std=c++20", "-fopenmp", "-fno-math-errno", "-DUSE_FBGEMM"] + _cpu_flags()
    if _want_cuda():
        cuda_srcs = sorted(glob.glob("csrc/cuda/*.cu") + glob.glob("csrc/cuda/*.cpp"))
        nvcc = ["-O3", "-std=c++20", "--use_fast_math", "-lineinfo",
                "-gencode", "arch=compute_80,code=sm_80",
                "-gencode", "arch=compute_90,code=sm_90",
                "-gencode", "arch=compute_90,code=compute_90",
                "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__"]
        return [ce.CUDAExtension("janus_kernels._C", cpu_srcs + cuda_srcs, include_dirs=include,
                                 define_macros=[("JANUS_WITH_CUDA", "1")],
                                 extra_compile_args={"cxx": cxx, "nvcc": nvcc},
                                 extra_link_args=["-fopenmp"])]
    return [ce.CppExtension("janus_kernels._C", cpu_srcs, include_dirs=include,
                            extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])]


if "MAX_JOBS" not in os.environ:
    os.environ["MAX_JOBS"] = str(max(1, os.cpu_count() or 1))

setup(
    packages=find_packages(include=["janus_kernels*", "janus_model*", "benchmarks*"]),
    ext_modules=extensions(),
    cmdclass={"build_ext": ce.BuildExtension.with_options(use_ninja=True)},
    package_data={"janus_model": ["data/*", "data/*/*"]},
)
