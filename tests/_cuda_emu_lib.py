"""Build the torch-free CUDA kernels (csrc/cuda/*.cu, unchanged: attention, losses) with g++
against the CPU emulation headers (csrc/cuda_emu/) into a shared library, and call their raw
launchers through ctypes on CPU torch tensors.

The library is cached under build/cuda_emu/<hash>/, keyed by the sources, headers, flags and
compiler version; the two .cu files compile in parallel (a few seconds each).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch

ROOT = Path(__file__).resolve().parents[1]
CUDA_DIR = ROOT / "csrc" / "cuda"
EMU_DIR = ROOT / "csrc" / "cuda_emu"
INCLUDE_DIR = ROOT / "csrc" / "include"
KERNEL_SOURCES = [CUDA_DIR / "attention_fwd.cu", CUDA_DIR / "attention_bwd.cu"]
# The half-precision macros of torch's CUDAExtension build, so the emulation build rejects the
# same implicit __half / __nv_bfloat16 conversions nvcc would.
CXXFLAGS = ["-std=c++20", "-O2", "-fPIC", "-DJANUS_CUDA_EMU", "-Wall", "-Wno-unknown-pragmas",
            "-Wno-unused-parameter", "-D__CUDA_NO_HALF_CONVERSIONS__",
            "-D__CUDA_NO_HALF2_OPERATORS__"]


def cuda_include_dir() -> Optional[Path]:
    """A directory with cuda_fp16.h / cuda_runtime_api.h: $CUDA_HOME, the toolkit behind
    `nvcc` (nvcc --dryrun prints it; the nvcc on PATH may be a wrapper script), the pip wheels
    (nvidia-cuda-runtime + nvidia-cuda-crt + nvidia-cuda-cccl), /usr/local/cuda."""
    cands: List[Path] = []
    if os.environ.get("CUDA_HOME"):
        cands.append(Path(os.environ["CUDA_HOME"]) / "include")
    nvcc = shutil.which("nvcc")
    if nvcc:
        try:
            out = subprocess.run([nvcc, "--dryrun", "-c", "-x", "cu", os.devnull],
                                 capture_output=True, text=True, timeout=60)
            for line in (out.stdout + out.stderr).splitlines():
                if line.startswith("#$ _HERE_="):
                    cands.append(Path(line.split("=", 1)[1].strip()).parent / "include")
        except (OSError, subprocess.SubprocessError):
            pass
        cands.append(Path(os.path.realpath(nvcc)).parent.parent / "include")
    try:
        import nvidia  # the pip wheels: nvidia/cu13/include or nvidia/cuda_runtime/include
        for base in nvidia.__path__:
            cands += [Path(base) / "cu13" / "include", Path(base) / "cuda_runtime" / "include"]
    except ImportError:
        pass
    cands.append(Path("/usr/local/cuda/include"))
    for c in cands:
        if (c / "cuda_fp16.h").is_file() and (c / "cuda_runtime_api.h").is_file():
            return c
    return None


def _inputs() -> List[Path]:
    files = list(KERNEL_SOURCES) + [EMU_DIR / "emu_runtime.cpp"]
    for d, pats in ((CUDA_DIR, ("*.cuh", "*.h")), (EMU_DIR, ("*.h",)),
                    (INCLUDE_DIR / "janus", ("*.h",))):
        for p in pats:
            files += sorted(d.glob(p))
    return files


def build(extra_flags: Sequence[str] = (), sources: Optional[Sequence[Path]] = None,
          name: str = "janus_cuda_emu") -> Path:
    """Compile (or reuse) the emulation library; returns the .so path."""
    inc = cuda_include_dir()
    if inc is None:
        raise RuntimeError("cuda_emu: no CUDA headers (cuda_fp16.h) found: install the CUDA "
                           "toolkit or `pip install nvidia-cuda-runtime nvidia-cuda-crt "
                           "nvidia-cuda-cccl`, or set CUDA_HOME")
    cxx = os.environ.get("CXX", "g++")
    sources = list(KERNEL_SOURCES if sources is None else sources) + [EMU_DIR / "emu_runtime.cpp"]
    flags = CXXFLAGS + list(extra_flags) + [f"-I{INCLUDE_DIR}", f"-I{EMU_DIR}", f"-I{inc}"]
    h = hashlib.sha256()
    ver = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    h.update((ver + " ".join(flags) + name).encode())
    for f in sorted(set(_inputs()) | set(sources)):
        h.update(str(f.relative_to(ROOT)).encode())
        h.update(f.read_bytes())
    out_dir = ROOT / "build" / "cuda_emu" / h.hexdigest()[:16]
    lib = out_dir / f"lib{name}.so"
    if lib.is_file():
        return lib
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent))

    def compile_one(src: Path) -> Path:
        obj = tmp / (src.stem + ".o")
        lang = ["-x", "c++"] if src.suffix == ".cu" else []
        r = subprocess.run([cxx, *flags, *lang, "-c", str(src), "-o", str(obj)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"cuda_emu: compiling {src.name} failed:\n{r.stderr[-6000:]}")
        return obj

    with ThreadPoolExecutor(max_workers=max(1, min(len(sources), os.cpu_count() or 1))) as ex:
        objs = list(ex.map(compile_one, sources))
    r = subprocess.run([cxx, "-shared", "-o", str(tmp / lib.name), *map(str, objs), "-lpthread",
                        *[f for f in extra_flags if f.startswith("-fsanitize")]],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"cuda_emu: linking failed:\n{r.stderr[-4000:]}")
    try:
        os.replace(tmp, out_dir)           # atomic publish; a concurrent build may win
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return lib


# --------------------------------------------------------------------------- ctypes mirror
_I64x3 = ctypes.c_int64 * 3


class FwdArgs(ctypes.Structure):
    """Mirror of JanusAttnFwdArgs (csrc/cuda/attention_launch.h)."""
    _fields_ = [("q", ctypes.c_void_p), ("k", ctypes.c_void_p), ("v", ctypes.c_void_p),
                ("out", ctypes.c_void_p), ("lse", ctypes.c_void_p),
                ("mask_params", ctypes.c_void_p), ("mask_rank", ctypes.c_void_p),
                ("rank_stride", ctypes.c_int64),
                ("q_stride", _I64x3), ("k_stride", _I64x3), ("v_stride", _I64x3),
                ("o_stride", _I64x3),
                ("B", ctypes.c_int32), ("H", ctypes.c_int32), ("Hkv", ctypes.c_int32),
                ("Lq", ctypes.c_int32), ("Lk", ctypes.c_int32), ("head_dim", ctypes.c_int32),
                ("q_split", ctypes.c_int32), ("mask_kind", ctypes.c_int32),
                ("dtype", ctypes.c_int32), ("scale", ctypes.c_float),
                ("dropout_p", ctypes.c_float), ("seed", ctypes.c_uint64),
                ("rel_bias", ctypes.c_void_p), ("rel_len", ctypes.c_int32),
                ("softcap", ctypes.c_float)]


class BwdArgs(ctypes.Structure):
    """Mirror of JanusAttnBwdArgs (csrc/cuda/attention_launch.h)."""
    _fields_ = [("dout", ctypes.c_void_p), ("q", ctypes.c_void_p), ("k", ctypes.c_void_p),
                ("v", ctypes.c_void_p), ("out", ctypes.c_void_p), ("lse", ctypes.c_void_p),
                ("dq", ctypes.c_void_p), ("dk", ctypes.c_void_p), ("dv", ctypes.c_void_p),
                ("delta", ctypes.c_void_p),
                ("mask_params", ctypes.c_void_p), ("mask_rank", ctypes.c_void_p),
                ("rank_stride", ctypes.c_int64),
                ("do_stride", _I64x3), ("q_stride", _I64x3), ("k_stride", _I64x3),
                ("v_stride", _I64x3), ("o_stride", _I64x3), ("dq_stride", _I64x3),
                ("dk_stride", _I64x3), ("dv_stride", _I64x3),
                ("B", ctypes.c_int32), ("H", ctypes.c_int32), ("Hkv", ctypes.c_int32),
                ("Lq", ctypes.c_int32), ("Lk", ctypes.c_int32), ("head_dim", ctypes.c_int32),
                ("q_split", ctypes.c_int32), ("mask_kind", ctypes.c_int32),
                ("dtype", ctypes.c_int32), ("scale", ctypes.c_float),
                ("dropout_p", ctypes.c_float), ("seed", ctypes.c_uint64),
                ("rel_bias", ctypes.c_void_p), ("d_rel_bias", ctypes.c_void_p),
                ("rel_len", ctypes.c_int32), ("softcap", ctypes.c_float)]


_DTYPES = {torch.float16: 0, torch.bfloat16: 1}


class EmuError(RuntimeError):
    pass


def _strides(t: torch.Tensor) -> "_I64x3":
    return _I64x3(*t.stride()[:3])


class EmuKernels:
    """The CUDA attention launchers running on the CPU emulation."""

    def __init__(self, lib_path: Path):
        self.path = lib_path
        self.lib = ctypes.CDLL(str(lib_path))
        self.lib.janus_cuda_attention_fwd.argtypes = [ctypes.POINTER(FwdArgs), ctypes.c_void_p]
        self.lib.janus_cuda_attention_fwd.restype = ctypes.c_int
        self.lib.janus_cuda_attention_bwd.argtypes = [ctypes.POINTER(BwdArgs), ctypes.c_void_p]
        self.lib.janus_cuda_attention_bwd.restype = ctypes.c_int
        self.lib.janus_emu_last_message.restype = ctypes.c_char_p
        self.lib.janus_emu_configure.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_uint,
                                                 ctypes.c_int]
        self.lib.janus_emu_set_block_order.argtypes = [ctypes.c_int]

    def configure(self, order: int = -1, workers: int = -1, seed: int = 0,
                  cp_eager: int = -1, block_order: int = -1) -> None:
        """Thread order 0/1/2, worker threads, random-order seed, cp.async at issue (1) or
        at wait_group (0), blocks handed out ascending (0) or descending (1); -1 / 0 fall back
        to EMU_ORDER, EMU_WORKERS, EMU_SEED, EMU_CP_ASYNC, EMU_BLOCK_ORDER."""
        self.lib.janus_emu_configure(order, workers, seed, cp_eager)
        self.lib.janus_emu_set_block_order(block_order)

    def _check(self, rc: int, what: str) -> None:
        if rc != 0:
            msg = self.lib.janus_emu_last_message().decode()
            raise EmuError(f"{what}: cudaError {rc} {msg}")

    @staticmethod
    def _mask_fields(args, mask):
        args.mask_params = mask.params.data_ptr()
        if mask.rank is not None:
            args.mask_rank = mask.rank.data_ptr()
            args.rank_stride = mask.rank.stride(0)
        args.q_split = mask.q_split
        args.mask_kind = int(mask.kind)

    @staticmethod
    def _mod_fields(args, rel_bias: Optional[torch.Tensor], softcap: float) -> None:
        """The score modifiers (rel_bias: float32 contiguous (H, Lq + Lk - 1) or None)."""
        if rel_bias is not None:
            args.rel_bias = rel_bias.data_ptr()
            args.rel_len = rel_bias.shape[-1]
        args.softcap = softcap

    def fwd(self, q, k, v, mask, *, scale: float, dropout_p: float = 0.0, seed: int = 0,
            rel_bias: Optional[torch.Tensor] = None, softcap: float = 0.0
            ) -> Tuple[torch.Tensor, torch.Tensor]:
        B, H, Lq, d = q.shape
        out = torch.full_like(q, float("nan"), memory_format=torch.contiguous_format)
        lse = torch.full((B, H, Lq), float("nan"), dtype=torch.float32)
        a = FwdArgs()
        a.q, a.k, a.v, a.out, a.lse = (t.data_ptr() for t in (q, k, v, out, lse))
        a.q_stride, a.k_stride, a.v_stride, a.o_stride = (_strides(t) for t in (q, k, v, out))
        self._mask_fields(a, mask)
        a.B, a.H, a.Hkv, a.Lq, a.Lk, a.head_dim = B, H, k.shape[1], Lq, k.shape[2], d
        a.dtype = _DTYPES[q.dtype]
        a.scale, a.dropout_p, a.seed = scale, dropout_p, seed & (2 ** 64 - 1)
        self._mod_fields(a, rel_bias, softcap)
        self._check(self.lib.janus_cuda_attention_fwd(ctypes.byref(a), None), "fwd")
        return out, lse

    def bwd(self, dout, q, k, v, out, lse, mask, *, scale: float, dropout_p: float = 0.0,
            seed: int = 0, rel_bias: Optional[torch.Tensor] = None, softcap: float = 0.0,
            d_rel_bias: Optional[torch.Tensor] = None
            ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(dq, dk, dv); with rel_bias, its gradient is added into `d_rel_bias` (float32, the
        table's shape, zero-filled by the caller: the kernel accumulates with atomics)."""
        B, H, Lq, d = q.shape
        dq = torch.full_like(q, float("nan"), memory_format=torch.contiguous_format)
        dk = torch.full_like(k, float("nan"), memory_format=torch.contiguous_format)
        dv = torch.full_like(v, float("nan"), memory_format=torch.contiguous_format)
        delta = torch.full((B, H, Lq), float("nan"), dtype=torch.float32)
        a = BwdArgs()
        ptrs = (dout, q, k, v, out, lse, dq, dk, dv, delta)
        (a.dout, a.q, a.k, a.v, a.out, a.lse, a.dq, a.dk, a.dv,
         a.delta) = (t.data_ptr() for t in ptrs)
        (a.do_stride, a.q_stride, a.k_stride, a.v_stride, a.o_stride, a.dq_stride, a.dk_stride,
         a.dv_stride) = (_strides(t) for t in (dout, q, k, v, out, dq, dk, dv))
        self._mask_fields(a, mask)
        a.B, a.H, a.Hkv, a.Lq, a.Lk, a.head_dim = B, H, k.shape[1], Lq, k.shape[2], d
        a.dtype = _DTYPES[q.dtype]
        a.scale, a.dropout_p, a.seed = scale, dropout_p, seed & (2 ** 64 - 1)
        self._mod_fields(a, rel_bias, softcap)
        if d_rel_bias is not None:
            a.d_rel_bias = d_rel_bias.data_ptr()
        self._check(self.lib.janus_cuda_attention_bwd(ctypes.byref(a), None), "bwd")
        return dq, dk, dv


# ============================================================================ loss kernels
LOSS_SOURCES = [CUDA_DIR / "loss.cu", CUDA_DIR / "janus_loss.cu"]

_LOSS_DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}


class SymKLArgs(ctypes.Structure):
    """Mirror of JanusSymKLArgs (csrc/cuda/loss_launch.h)."""
    _fields_ = [("x", ctypes.c_void_p), ("y", ctypes.c_void_p), ("row_mask", ctypes.c_void_p),
                ("grad", ctypes.c_void_p), ("loss", ctypes.c_void_p), ("stats", ctypes.c_void_p),
                ("dx", ctypes.c_void_p), ("dy", ctypes.c_void_p),
                ("rows", ctypes.c_int64), ("vocab", ctypes.c_int64),
                ("stride_x", ctypes.c_int64), ("stride_y", ctypes.c_int64),
                ("inv_temperature", ctypes.c_double), ("dtype", ctypes.c_int32)]


class CEArgs(ctypes.Structure):
    """Mirror of JanusCEArgs (csrc/cuda/loss_launch.h)."""
    _fields_ = [("x", ctypes.c_void_p), ("target", ctypes.c_void_p), ("grad", ctypes.c_void_p),
                ("loss", ctypes.c_void_p), ("stats", ctypes.c_void_p), ("dx", ctypes.c_void_p),
                ("rows", ctypes.c_int64), ("vocab", ctypes.c_int64),
                ("stride_x", ctypes.c_int64), ("ignore_index", ctypes.c_int64),
                ("label_smoothing", ctypes.c_double), ("dtype", ctypes.c_int32)]


class JanusRowsArgs(ctypes.Structure):
    """Mirror of JanusRowsArgs (csrc/cuda/loss_launch.h)."""
    _fields_ = [(n, ctypes.c_void_p) for n in (
        "ar", "nar", "aux", "ar_target", "masked_target", "ar_kl_rows", "first", "grad_ar",
        "grad_masked", "ar_loss", "masked_loss", "ar_stats", "masked_stats", "d_ar", "d_nar",
        "d_aux")] + [(n, ctypes.c_int64) for n in (
            "n_ar", "n_masked", "vocab", "stride_ar", "stride_nar", "stride_aux",
            "ignore_index")] + [("label_smoothing", ctypes.c_double), ("dtype", ctypes.c_int32)]


def janus_first(idx: torch.Tensor, n_ar: int) -> torch.Tensor:
    """The plan of janus_rows_*: the smallest masked row m with idx[m] == r, or -1 (N,), the
    way the CUDA glue computes it on the device (scatter_reduce amin; out-of-range idx values
    go to a spare slot)."""
    M = idx.numel()
    ok = (idx >= 0) & (idx < n_ar)
    slot = torch.where(ok, idx, torch.full_like(idx, n_ar))
    first = torch.full((n_ar + 1,), M, dtype=torch.long)
    first.scatter_reduce_(0, slot, torch.arange(M, dtype=torch.long), "amin")
    first = first[:n_ar]
    return torch.where(first == M, torch.full_like(first, -1), first)


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _ptr_or_none(t: Optional[torch.Tensor]) -> Optional[int]:
    return None if t is None or t.numel() == 0 else t.data_ptr()


def _rows_arg(t: torch.Tensor, name: str) -> torch.Tensor:
    if t.dim() != 2 or (t.size(1) > 1 and t.stride(1) != 1):
        raise ValueError(f"{name}: expected (rows, vocab) with a unit column stride")
    return t


class EmuLoss:
    """The CUDA loss launchers (loss.cu, janus_loss.cu) on the CPU emulation, with the
    signatures of the torch ops janus::symkl_rows_* / ce_rows_* / janus_rows_* (outputs are NaN-poisoned before the launch, so
    an element a kernel forgets to write shows up)."""

    def __init__(self, lib_path: Path):
        self.path = lib_path
        self.lib = ctypes.CDLL(str(lib_path))
        for name, st in (("janus_symkl_fwd", SymKLArgs), ("janus_symkl_bwd", SymKLArgs),
                         ("janus_ce_fwd", CEArgs), ("janus_ce_bwd", CEArgs),
                         ("janus_rows_fwd", JanusRowsArgs), ("janus_rows_bwd", JanusRowsArgs)):
            fn = getattr(self.lib, name)
            fn.argtypes = [ctypes.POINTER(st), ctypes.c_void_p]
            fn.restype = ctypes.c_int
        self.lib.janus_emu_last_message.restype = ctypes.c_char_p
        self.lib.janus_emu_configure.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_uint,
                                                 ctypes.c_int]

    def configure(self, order: int = -1, workers: int = -1, seed: int = 0) -> None:
        self.lib.janus_emu_configure(order, workers, seed, -1)

    def _call(self, name: str, args) -> None:
        rc = getattr(self.lib, name)(ctypes.byref(args), None)
        if rc != 0:
            raise EmuError(f"{name}: cudaError {rc} {self.lib.janus_emu_last_message().decode()}")

    @staticmethod
    def _nan(shape, dtype) -> torch.Tensor:
        return torch.full(shape, float("nan"), dtype=dtype)

    def symkl_fwd(self, x, y, row_mask: Optional[torch.Tensor], inv_temperature: float):
        x, y = _rows_arg(x, "logits_p"), _rows_arg(y, "logits_q")
        R, V = x.shape
        acc = _acc(x.dtype)
        loss, stats = self._nan((R,), acc), self._nan((R, 6), acc)
        mask = None if row_mask is None else row_mask.contiguous()
        a = SymKLArgs(x=_ptr_or_none(x), y=_ptr_or_none(y), row_mask=_ptr_or_none(mask),
                      loss=_ptr_or_none(loss), stats=_ptr_or_none(stats), rows=R, vocab=V,
                      stride_x=x.stride(0), stride_y=y.stride(0),
                      inv_temperature=inv_temperature, dtype=_LOSS_DTYPES[x.dtype])
        self._call("janus_symkl_fwd", a)
        return loss, stats

    def symkl_bwd(self, grad, x, y, stats, row_mask: Optional[torch.Tensor],
                  inv_temperature: float):
        x, y = _rows_arg(x, "logits_p"), _rows_arg(y, "logits_q")
        R, V = x.shape
        dx, dy = self._nan((R, V), x.dtype), self._nan((R, V), x.dtype)
        g, st = grad.contiguous(), stats.contiguous()
        mask = None if row_mask is None else row_mask.contiguous()
        a = SymKLArgs(x=_ptr_or_none(x), y=_ptr_or_none(y), row_mask=_ptr_or_none(mask),
                      grad=_ptr_or_none(g), stats=_ptr_or_none(st), dx=_ptr_or_none(dx),
                      dy=_ptr_or_none(dy), rows=R, vocab=V, stride_x=x.stride(0),
                      stride_y=y.stride(0), inv_temperature=inv_temperature,
                      dtype=_LOSS_DTYPES[x.dtype])
        self._call("janus_symkl_bwd", a)
        return dx, dy

    def ce_fwd(self, x, target, label_smoothing: float, ignore_index: int):
        x = _rows_arg(x, "logits")
        R, V = x.shape
        acc = _acc(x.dtype)
        loss, stats = self._nan((R,), acc), self._nan((R, 2), acc)
        t = target.contiguous()
        a = CEArgs(x=_ptr_or_none(x), target=_ptr_or_none(t), loss=_ptr_or_none(loss),
                   stats=_ptr_or_none(stats), rows=R, vocab=V, stride_x=x.stride(0),
                   ignore_index=ignore_index, label_smoothing=label_smoothing,
                   dtype=_LOSS_DTYPES[x.dtype])
        self._call("janus_ce_fwd", a)
        return loss, stats

    def ce_bwd(self, grad, x, target, stats, label_smoothing: float, ignore_index: int):
        x = _rows_arg(x, "logits")
        R, V = x.shape
        dx = self._nan((R, V), x.dtype)
        g, st, t = grad.contiguous(), stats.contiguous(), target.contiguous()
        a = CEArgs(x=_ptr_or_none(x), target=_ptr_or_none(t), grad=_ptr_or_none(g),
                   stats=_ptr_or_none(st), dx=_ptr_or_none(dx), rows=R, vocab=V,
                   stride_x=x.stride(0), ignore_index=ignore_index,
                   label_smoothing=label_smoothing, dtype=_LOSS_DTYPES[x.dtype])
        self._call("janus_ce_bwd", a)
        return dx

    # ------------------------------------------------------------------ JANUS criterion rows
    def _janus_args(self, ar, nar, aux, ar_t, m_t, idx, eps, ignore_index):
        ar, nar, aux = (_rows_arg(t, n) for t, n in ((ar, "ar_logits"), (nar, "nar_logits"),
                                                      (aux, "aux_logits")))
        keep = [ar_t.contiguous(), m_t.contiguous(), idx.contiguous(),
                janus_first(idx, ar.shape[0])]
        a = JanusRowsArgs(ar=_ptr_or_none(ar), nar=_ptr_or_none(nar), aux=_ptr_or_none(aux),
                          ar_target=_ptr_or_none(keep[0]), masked_target=_ptr_or_none(keep[1]),
                          ar_kl_rows=_ptr_or_none(keep[2]), first=_ptr_or_none(keep[3]),
                          n_ar=ar.shape[0], n_masked=nar.shape[0], vocab=ar.shape[1],
                          stride_ar=ar.stride(0), stride_nar=nar.stride(0),
                          stride_aux=aux.stride(0), ignore_index=ignore_index,
                          label_smoothing=eps, dtype=_LOSS_DTYPES[ar.dtype])
        return a, keep

    def janus_fwd(self, ar, nar, aux, ar_t, m_t, idx, eps: float, ignore_index: int):
        """Same signature and outputs as torch.ops.janus.janus_rows_fwd."""
        a, keep = self._janus_args(ar, nar, aux, ar_t, m_t, idx, eps, ignore_index)
        N, M, acc = ar.shape[0], nar.shape[0], _acc(ar.dtype)
        out = (self._nan((N,), acc), self._nan((M, 5), acc), self._nan((N, 2), acc),
               self._nan((M, 12), acc))
        a.ar_loss, a.masked_loss, a.ar_stats, a.masked_stats = (_ptr_or_none(t) for t in out)
        self._call("janus_rows_fwd", a)
        return out

    def janus_bwd(self, g_ar, g_m, ar, nar, aux, ar_t, m_t, idx, ar_st, m_st, eps: float,
                  ignore_index: int):
        """Same signature and outputs as torch.ops.janus.janus_rows_bwd."""
        a, keep = self._janus_args(ar, nar, aux, ar_t, m_t, idx, eps, ignore_index)
        N, M, V = ar.shape[0], nar.shape[0], ar.shape[1]
        keep += [t.contiguous() for t in (g_ar, g_m, ar_st, m_st)]
        a.grad_ar, a.grad_masked, a.ar_stats, a.masked_stats = (_ptr_or_none(t)
                                                                for t in keep[4:])
        out = (self._nan((N, V), ar.dtype), self._nan((M, V), ar.dtype),
               self._nan((M, V), ar.dtype))
        a.d_ar, a.d_nar, a.d_aux = (_ptr_or_none(t) for t in out)
        self._call("janus_rows_bwd", a)
        return out
