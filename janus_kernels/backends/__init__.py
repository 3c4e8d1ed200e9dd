"""The backend contract: every backend declares what it can serve, and dispatch is derived
from those declarations alone -- the same way for attention and for the losses.

A backend (one module each: ``cpu``, ``cuda``, ``triton``, ``reference``) is a
:class:`Backend` with

* ``serves``: :class:`Serves` declarations -- which ops, on which device type, for which
  dtypes (and attention head dims), with which optional features (attention's score
  modifiers ``"softcap"`` and ``"rel_bias"``), at what priority;
* ``unavailable(device, dtype)``: the run-time requirement (extension built, CPU ISA level, GPU
  compute capability against the built architectures, Triton importable), as a reason string
  or None;
* the raw functions of the ops it serves (one signature per op, shared by all backends)::

    attention_fwd(q, k, v, params, rank, q_split, kind, scale, dropout_p, seed,
                  rel_bias=None, softcap=0.0) -> (out, lse)
    attention_bwd(dout, q, k, v, out, lse, params, rank, q_split, kind, scale, dropout_p,
                  seed, rel_bias=None, softcap=0.0) -> (dq, dk, dv, d_rel_bias)
    kl_fwd(x, y, row_mask, inv_t) -> (loss (R,), stats)
    kl_bwd(grad (R,), x, y, stats, row_mask, inv_t) -> (dx, dy)
    ce_fwd(x, target, eps, ignore_index) -> (loss (R,), stats)
    ce_bwd(grad (R,), x, target, stats, eps, ignore_index) -> dx
    janus_fwd(ar, nar, aux, ar_t, m_t, idx, eps, ignore_index)
        -> (ar_loss (N,), masked_loss (M, 5), ar_stats, masked_stats)
    janus_bwd(g_ar, g_m, ar, nar, aux, ar_t, m_t, idx, ar_stats, masked_stats, eps,
              ignore_index) -> (d_ar, d_nar, d_aux)
    dropout_fwd(y, residual, p, seed) -> residual + keep * y / (1 - p)
    dropout_bwd(grad, p, seed) -> keep * grad / (1 - p)

Ops: ``attention``, ``symmetric_kl``, ``cross_entropy``, ``janus_rows`` (the fused JANUS
criterion rows), ``dropout_add`` (residual dropout with the Philox mask of dropout_add.py). ``default_backend(op, device, dtype, head_dim, features)`` is the serving
backend with the highest priority; an explicitly requested backend that cannot serve a call raises a
:class:`BackendError` naming the op, backend, device and reason. ``"cpp"``, the former name
of both compiled backends, is accepted as an alias of ``"cpu"`` / ``"cuda"`` by device.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable, Dict, Optional, Tuple, Union

import torch

__all__ = ["OPS", "Serves", "Backend", "BackendError", "register", "get", "for_custom_op",
           "names", "default_backend", "available_backends", "resolve", "why_not"]

OPS = ("attention", "symmetric_kl", "cross_entropy", "janus_rows", "dropout_add")
ALIASES = {"cpp": {"cpu": "cpu", "cuda": "cuda"}}


class BackendError(ValueError):
    """An explicitly requested backend cannot serve the call (names op, backend, device, reason)."""


@dataclasses.dataclass(frozen=True)
class Serves:
    """One declaration: the backend serves `ops` for tensors on `device` ("cpu", "cuda", or
    "any" device type) in
    `dtypes`, with head dims accepted by `head_dims` (attention only; None: any) and the
    optional `features` (attention's score modifiers: "softcap", "rel_bias")."""
    ops: Tuple[str, ...]
    device: str
    dtypes: Tuple[torch.dtype, ...]
    priority: int
    head_dims: Optional[Callable[[int], bool]] = None
    head_dims_text: str = ""
    features: Tuple[str, ...] = ()

    def reject(self, op: str, device: torch.device, dtype: Optional[torch.dtype],
               head_dim: Optional[int], features: Tuple[str, ...] = ()) -> Optional[str]:
        if op not in self.ops or self.device not in (device.type, "any"):
            return f"does not serve {op} on {device.type}"
        missing = [f for f in features if f not in self.features]
        if missing:
            return f"{op} on {device.type} does not implement {', '.join(missing)}"
        if dtype is not None and dtype not in self.dtypes:
            names = ", ".join(str(d).replace("torch.", "") for d in self.dtypes)
            return f"{op} on {device.type} supports dtypes {names}, not {str(dtype).replace('torch.', '')}"
        if head_dim is not None and self.head_dims is not None and not self.head_dims(head_dim):
            return f"{op} on {device.type} needs head_dim {self.head_dims_text}, got {head_dim}"
        return None


class Backend:
    """Base class: subclasses set `name` and `serves` and implement `unavailable` and the raw
    functions of the ops they serve."""
    name: str = ""
    serves: Tuple[Serves, ...] = ()

    def unavailable(self, device: torch.device,
                    dtype: Optional[torch.dtype] = None) -> Optional[str]:
        """Why this backend cannot run on `device` (for `dtype`, when given) now; None: it can."""
        return None

    def detail(self, device: torch.device) -> str:
        """What it would run on `device` (e.g. the CPU ISA level), for reports."""
        return ""


_REGISTRY: Dict[str, Backend] = {}
# resolve()'s answers for CPU tensors (see there), keyed by the call's constants and the
# environment variables they depend on
_RESOLVED: Dict[tuple, str] = {}
# what the CPU answers depend on besides the call: the ISA cap and Triton's interpreter switch
_CPU_ENV = ("JANUS_CPU_ISA", "TRITON_INTERPRET")


def register(backend: Backend) -> Backend:
    _REGISTRY[backend.name] = backend
    _RESOLVED.clear()
    return backend


_LOADED = False


def _ensure_loaded() -> None:
    # every backend module registers itself on import (importing one alone registers only it);
    # the flag keeps the import statement (a few us) off the per-call path
    global _LOADED
    if not _LOADED:
        from . import cpu, cuda, reference, triton  # noqa: F401
        _LOADED = True


def names() -> Tuple[str, ...]:
    _ensure_loaded()
    return tuple(_REGISTRY)


def get(name: str) -> Backend:
    _ensure_loaded()
    return _REGISTRY[name]


def for_custom_op(name: str, op: str) -> Backend:
    """The backend behind a resolved name inside custom op ``janus::<op>`` (the ops take
    names, not objects); a ValueError for a name that is not registered."""
    if name not in names():
        raise ValueError(f"janus::{op}: backend must be one of {names()}, got {name!r} (the "
                         f"public function also accepts aliases and None)")
    return _REGISTRY[name]


@torch.compiler.assume_constant_result   # see resolve()
def why_not(op: str, name: str, device: Union[str, torch.device],
            dtype: Optional[torch.dtype] = None, head_dim: Optional[int] = None,
            features: Tuple[str, ...] = ()) -> Optional[str]:
    """None when backend `name` can serve `op` for this call, else the reason."""
    _ensure_loaded()
    device = torch.device(device)
    be = _REGISTRY[name]
    reasons = []
    for s in be.serves:
        r = s.reject(op, device, dtype, head_dim, features)
        if r is None:
            return be.unavailable(device, dtype)
        if op in s.ops and s.device in (device.type, "any"):   # the declaration that was meant
            reasons.append(r)
    return "; ".join(dict.fromkeys(reasons)) or f"does not serve {op} on {device.type}"


def _priority(op: str, name: str, device: torch.device, dtype, head_dim, features) -> int:
    return max(s.priority for s in _REGISTRY[name].serves
               if s.reject(op, device, dtype, head_dim, features) is None)


@torch.compiler.assume_constant_result   # see resolve()
def default_backend(op: str, device: Union[str, torch.device],
                    dtype: Optional[torch.dtype] = torch.float32,
                    head_dim: Optional[int] = None, features: Tuple[str, ...] = ()) -> str:
    """The backend `op` uses when none is given: the serving backend of highest priority
    (that implements every one of `features`)."""
    if op not in OPS:
        raise ValueError(f"default_backend: op must be one of {OPS}, got {op!r}")
    _ensure_loaded()
    device = torch.device(device)
    features = tuple(features)
    ok = [n for n in _REGISTRY if why_not(op, n, device, dtype, head_dim, features) is None]
    if not ok:   # the reference serves everything; only reachable with a broken registry
        raise RuntimeError(f"no backend serves {op} on {device} for {dtype}")
    return max(ok, key=lambda n: _priority(op, n, device, dtype, head_dim, features))


def available_backends(device: Union[str, torch.device] = "cpu", op: str = "attention",
                       dtype: Optional[torch.dtype] = None,
                       head_dim: Optional[int] = None,
                       features: Tuple[str, ...] = ()) -> Dict[str, str]:
    """Backend name -> "yes" or the reason it cannot serve `op` on `device` (for `dtype`,
    `head_dim` and `features` when given)."""
    _ensure_loaded()
    return {n: why_not(op, n, device, dtype, head_dim, tuple(features)) or "yes"
            for n in _REGISTRY}


# torch.compile: the choice depends only on constants (op, names, device, dtype, head dim) and
# on the machine, so it is made once at trace time (the CPU ISA level is chosen later, per
# call, inside the op).
@torch.compiler.assume_constant_result
def resolve(op: str, backend: Optional[str], device: torch.device, dtype: torch.dtype,
            head_dim: Optional[int], who: str, features: Tuple[str, ...] = ()) -> str:
    """The backend name to use: the default, or the requested one after checking that it
    can serve this call (BackendError otherwise).

    For CPU tensors the answer is remembered: it depends only on the call's constants, the
    machine and two environment variables (part of the key), and working it out costs ~15 us
    of Python per call -- as much as the kernel of a decoding step. GPU answers also depend on
    the device (its compute capability), so they are worked out every time."""
    _ensure_loaded()
    if device.type == "cpu" and (backend is None or isinstance(backend, str)):
        key = (op, backend, dtype, head_dim, features,
               tuple(os.environ.get(e) for e in _CPU_ENV))
        name = _RESOLVED.get(key)
        if name is None:
            name = _resolve(op, backend, device, dtype, head_dim, who, features)
            _RESOLVED[key] = name   # only successes: errors are raised on every call
        return name
    return _resolve(op, backend, device, dtype, head_dim, who, features)


def _resolve(op: str, backend: Optional[str], device: torch.device, dtype: torch.dtype,
             head_dim: Optional[int], who: str, features: Tuple[str, ...]) -> str:
    if backend is None:
        return default_backend(op, device, dtype, head_dim, features)
    if not isinstance(backend, str):
        raise TypeError(f"{who}: backend must be a str or None, got {type(backend).__name__}")
    name = ALIASES.get(backend, {}).get(device.type, backend)
    if name not in _REGISTRY:
        raise ValueError(f"{who}: backend must be one of {sorted(_REGISTRY)} (or None for the "
                         f"default), got {backend!r}")
    reason = why_not(op, name, device, dtype, head_dim, features)
    if reason is not None:
        raise BackendError(f"{who}: backend {name!r} cannot run {op} on {device}: {reason}")
    return name
