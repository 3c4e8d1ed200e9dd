"""The CUDA C++ kernels (csrc/cuda), when the extension was built with them.

They exist only for the architectures compiled in (setup.py, TORCH_CUDA_ARCH_LIST; sm_80 or
newer): a device is served when a cubin of its major version and a minor version not above
its own was built, or PTX of a version not above the device's (the driver JIT-compiles it).
Anything else -- a T4 (sm_75), a V100 (sm_70) -- is not served, so the default moves on to
Triton and then to the reference instead of failing with "no kernel image is available".
"""
from __future__ import annotations

import re
from typing import List, Optional, Tuple

import torch

from .. import _ext
from . import Backend, Serves, register

_ATTN_DTYPES = (torch.float16, torch.bfloat16)
_LOSS_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def built_archs() -> List[Tuple[int, int, bool]]:
    """[(major, minor, ptx)] compiled into the extension (empty without CUDA kernels)."""
    if not _ext.has_cuda_kernels():
        return []
    m = re.search(r";cuda\[([^\]]*)\]", _ext.build_info())
    out = []
    for tag in (m.group(1).split(",") if m else []):
        ptx = tag.endswith("+ptx")
        digits = tag.replace("+ptx", "")
        out.append((int(digits[:-1]), int(digits[-1]), ptx))
    return out


def arch_runs(capability: Tuple[int, int], archs: List[Tuple[int, int, bool]]) -> bool:
    """Whether a device of `capability` can run one of `archs` (cubin: same major, built
    minor <= device minor; PTX: built version <= device version)."""
    major, minor = capability
    for a_major, a_minor, ptx in archs:
        if a_major == major and a_minor <= minor:
            return True
        if ptx and (a_major, a_minor) <= (major, minor):
            return True
    return False


def _raw(op: str):
    """The backend's raw function for kernel op `op` of the `janus` namespace (CUDA kernels); multi-output ops come back
    as tuples (the backend contract), single outputs as tensors."""
    def call(*args):
        out = getattr(torch.ops.janus, op)(*args)
        return tuple(out) if isinstance(out, (list, tuple)) else out
    call.__name__ = op
    return staticmethod(call)


class CudaBackend(Backend):
    name = "cuda"
    serves = (
        Serves(("attention",), "cuda", _ATTN_DTYPES, priority=30,
               head_dims=lambda d: d % 8 == 0 and 8 <= d <= 128,
               head_dims_text="a multiple of 8 in [8, 128]",
               features=("softcap", "rel_bias")),   # csrc/cuda/attention_score_mods.cuh
        # the loss kernels are correct (emulation-tested) but not yet timed on a GPU: Triton
        # (priority 20) stays the default for them
        Serves(("symmetric_kl", "cross_entropy", "janus_rows"), "cuda", _LOSS_DTYPES,
               priority=10),
    )

    def unavailable(self, device: torch.device,
                    dtype: Optional[torch.dtype] = None) -> Optional[str]:
        if not _ext.has_cuda_kernels():
            return ("the extension was built without CUDA kernels (rebuild with "
                    "JANUS_WITH_CUDA=1 and a CUDA toolkit)")
        if not torch.cuda.is_available():
            return "torch sees no CUDA device"
        cap = torch.cuda.get_device_capability(device)
        archs = built_archs()
        if not arch_runs(cap, archs):
            built = ", ".join(f"sm_{a}{b}" + ("+PTX" if p else "") for a, b, p in archs)
            return (f"{torch.cuda.get_device_name(device)} is sm_{cap[0]}{cap[1]}; kernel "
                    f"images were built for {built} (the kernels need sm_80+)")
        return None

    attention_fwd, attention_bwd = _raw("flash_attention_fwd"), _raw("flash_attention_bwd")
    kl_fwd, kl_bwd = _raw("symkl_rows_fwd"), _raw("symkl_rows_bwd")
    ce_fwd, ce_bwd = _raw("ce_rows_fwd"), _raw("ce_rows_bwd")
    janus_fwd, janus_bwd = _raw("janus_rows_fwd"), _raw("janus_rows_bwd")

register(CudaBackend())
