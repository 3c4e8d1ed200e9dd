"""Build-time configuration shared by setup.py and its tests (not part of the installed
package): the CUDA architectures to compile for."""
import os
import warnings
from typing import List, Optional, Tuple

Arch = Tuple[int, int, bool]   # (major, minor, also emit PTX)
DEFAULT_ARCHS: List[Arch] = [(8, 0, False), (8, 6, False), (9, 0, True)]
_NAMED = {"Ampere": "8.0;8.6", "Ada": "8.9", "Hopper": "9.0"}


def cuda_archs(env: Optional[str] = None) -> List[Arch]:
    """[(major, minor, ptx)] from TORCH_CUDA_ARCH_LIST (torch's syntax), or our default.
    Architectures below 8.0 are dropped with a warning (the kernels need mma.sync bf16 and
    cp.async); the list is compiled into the module so the runtime can tell which devices
    have a kernel image (janus_kernels/backends/cuda.py)."""
    env = os.environ.get("TORCH_CUDA_ARCH_LIST") if env is None else env
    if not env:
        return list(DEFAULT_ARCHS)
    out = []
    for item in env.replace(",", ";").replace(" ", ";").split(";"):
        if not item:
            continue
        ptx = item.upper().endswith("+PTX")
        num = item[:-4] if ptx else item
        for part in _NAMED.get(num, num).split(";"):
            major, minor = (int(x) for x in part.split(".")[:2])
            if major < 8:
                warnings.warn(f"janus-kernels: TORCH_CUDA_ARCH_LIST entry {item} dropped: "
                              f"the CUDA kernels need sm_80 or newer")
                continue
            out.append((major, minor, ptx))
    if not out:
        raise RuntimeError("TORCH_CUDA_ARCH_LIST has no architecture >= 8.0 for the CUDA kernels")
    return out


def gencode_flags(archs: List[Arch]) -> List[str]:
    """nvcc -gencode flags: a cubin per architecture, plus PTX where asked."""
    flags = []
    for major, minor, ptx in archs:
        flags += ["-gencode", f"arch=compute_{major}{minor},code=sm_{major}{minor}"]
        if ptx:
            flags += ["-gencode", f"arch=compute_{major}{minor},code=compute_{major}{minor}"]
    return flags
