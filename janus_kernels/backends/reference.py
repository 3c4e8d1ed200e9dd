"""The dense eager-PyTorch backend: every op on any device and dtype, by the textbook
formulas (the attention mask is materialized; the losses run on log_softmax quantities).
Slow, and the ground truth the compiled backends are tested against."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..dropout import dropout_keep_mask
from ..dropout_add import reference_dropout_bwd, reference_dropout_fwd
from ..masks import MaskDescriptor
from ..reference import reference_attention, reference_attention_backward
from ..score_mods import dense_rel_bias, rel_bias_grad
from . import Backend, OPS, Serves, register

_ALL = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def _descriptor(params, rank, q_split, kind, Lq, Lk) -> MaskDescriptor:
    return MaskDescriptor(params, Lq, Lk, q_split, kind, rank)   # it checks the kind


def _keep(seed, B, H, Lq, Lk, dropout_p, device) -> Optional[torch.Tensor]:
    if dropout_p <= 0:
        return None
    return dropout_keep_mask(int(seed[0]), B, H, Lq, Lk, dropout_p, device)


def _dense_bias(rel_bias, Lq, Lk):
    return None if rel_bias is None else dense_rel_bias(rel_bias, Lq, Lk)


def attention_fwd(q, k, v, params, rank, q_split, kind, scale, dropout_p, seed, rel_bias=None,
                  softcap=0.0):
    B, H, Lq, _ = q.shape
    Lk = k.shape[2]
    allowed = _descriptor(params, rank, q_split, kind, Lq, Lk).materialize()
    keep = _keep(seed, B, H, Lq, Lk, dropout_p, q.device)
    o, lse = reference_attention(q, k, v, allowed, scale=scale, keep=keep,
                                 dropout_p=dropout_p, return_lse=True, softcap=softcap or None,
                                 bias=_dense_bias(rel_bias, Lq, Lk))
    return o, lse.float()


def attention_bwd(dout, q, k, v, out, lse, params, rank, q_split, kind, scale, dropout_p, seed,
                  rel_bias=None, softcap=0.0):
    B, H, Lq, _ = q.shape
    Lk = k.shape[2]
    allowed = _descriptor(params, rank, q_split, kind, Lq, Lk).materialize()
    keep = _keep(seed, B, H, Lq, Lk, dropout_p, q.device)
    grads = reference_attention_backward(dout, q, k, v, allowed, scale=scale, keep=keep,
                                         dropout_p=dropout_p, out=out, softcap=softcap or None,
                                         bias=_dense_bias(rel_bias, Lq, Lk))
    if rel_bias is None:
        return grads + (q.new_empty((0,), dtype=torch.float32),)
    return grads[:3] + (rel_bias_grad(grads[3]),)


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# ============================================================== reference backend
def _kl_rows(x, y, row_mask, inv_t):
    """Eager formula: log_softmax both sides, 1/2 sum (p - q)(log p - log q)."""
    ct = _acc(x.dtype)
    xs, ys = x.to(ct) * inv_t, y.to(ct) * inv_t
    if row_mask is not None:  # masked rows are never read (they may hold NaN padding)
        keep = row_mask[:, None]
        xs = torch.where(keep, xs, torch.zeros((), dtype=ct, device=x.device))
        ys = torch.where(keep, ys, torch.zeros((), dtype=ct, device=x.device))
    lp, lq = torch.log_softmax(xs, -1), torch.log_softmax(ys, -1)
    p, q = lp.exp(), lq.exp()
    both = (p == 0) & (q == 0)  # both -inf (or both underflow): the term is 0
    d = torch.where(both, torch.zeros((), dtype=ct, device=x.device), lp - lq)
    loss = 0.5 * ((p - q) * d).sum(-1)
    if row_mask is not None:
        loss = torch.where(row_mask, loss, torch.zeros((), dtype=ct, device=x.device))
    return loss, (xs, ys, p, q, d)


def kl_fwd(x, y, row_mask, inv_t):
    loss, (xs, ys, p, q, d) = _kl_rows(x, y, row_mask, inv_t)
    mx, my = xs.amax(-1), ys.amax(-1)
    zx, zy = (xs - mx[:, None]).exp().sum(-1), (ys - my[:, None]).exp().sum(-1)
    stats = torch.stack([mx, 1 / zx, my, 1 / zy, (p * d).sum(-1), (q * d).sum(-1)], 1)
    return loss, stats


def kl_bwd(grad, x, y, stats, row_mask, inv_t):
    """Eager gradient formulas (module docstring) on log_softmax quantities. Autograd is not
    available here: custom-op bodies run below the autograd dispatch key."""
    loss, (xs, ys, p, q, d) = _kl_rows(x, y, row_mask, inv_t)
    zero = torch.zeros((), dtype=p.dtype, device=p.device)
    sp = torch.where(p == 0, zero, p * d).sum(-1, keepdim=True)
    sq = torch.where(q == 0, zero, q * d).sum(-1, keepdim=True)
    c = (0.5 * inv_t) * grad.to(p.dtype)[:, None]
    dx = c * (torch.where(p == 0, zero, p * (d - sp + 1)) - q)
    dy = c * (torch.where(q == 0, zero, q * (1 + sq - d)) - p)
    keep = torch.isfinite(loss)[:, None]  # infinite KL rows: undefined gradient -> NaN
    nan = torch.full((), float("nan"), dtype=p.dtype, device=p.device)
    dx, dy = torch.where(keep, dx, nan), torch.where(keep, dy, nan)
    if row_mask is not None:
        dx = torch.where(row_mask[:, None], dx, zero)
        dy = torch.where(row_mask[:, None], dy, zero)
    return dx.to(x.dtype), dy.to(y.dtype)


def _ce_rows(x, target, eps, ignore_index):
    ct = _acc(x.dtype)
    valid = target != ignore_index
    xs = torch.where(valid[:, None], x.to(ct), torch.zeros((), dtype=ct, device=x.device))
    lp = torch.log_softmax(xs, -1)
    t = torch.where(valid, target, torch.zeros_like(target))
    loss = -(1.0 - eps) * lp.gather(1, t[:, None]).squeeze(1)
    if eps > 0:
        loss = loss - eps * lp.mean(-1)
    return torch.where(valid, loss, torch.zeros((), dtype=ct, device=x.device)), xs


def ce_fwd(x, target, eps, ignore_index):
    V = x.shape[1]
    bad = (target != ignore_index) & ((target < 0) | (target >= V))
    if x.device.type == "cpu" and bool(bad.any()):  # CPU: no device sync involved
        raise ValueError(f"cross_entropy: target has values outside [0, {V}) that are not "
                         f"ignore_index ({ignore_index})")
    loss, xs = _ce_rows(x, target, eps, ignore_index)
    m = xs.amax(-1)
    stats = torch.stack([m, 1 / (xs - m[:, None]).exp().sum(-1)], 1)
    return loss, stats


def ce_bwd(grad, x, target, stats, eps, ignore_index):
    """g [softmax(x) - eps/V - (1 - eps) onehot(t)], zero on ignored rows."""
    V = x.shape[1]
    _, xs = _ce_rows(x, target, eps, ignore_index)
    valid = target != ignore_index
    t = torch.where(valid, target, torch.zeros_like(target))
    dx = torch.softmax(xs, -1) - eps / V
    dx = dx - (1.0 - eps) * F.one_hot(t, V).to(dx.dtype)
    dx = dx * torch.where(valid, grad.to(dx.dtype), torch.zeros((), dtype=dx.dtype,
                                                                 device=dx.device))[:, None]
    return dx.to(x.dtype)


class ReferenceBackend(Backend):
    name = "reference"
    serves = (Serves(tuple(o for o in OPS if o != "janus_rows"), "any", _ALL, priority=0,
                     features=("softcap", "rel_bias")),)
    attention_fwd = staticmethod(attention_fwd)
    attention_bwd = staticmethod(attention_bwd)
    kl_fwd, kl_bwd = staticmethod(kl_fwd), staticmethod(kl_bwd)
    ce_fwd, ce_bwd = staticmethod(ce_fwd), staticmethod(ce_bwd)
    dropout_fwd = staticmethod(reference_dropout_fwd)
    dropout_bwd = staticmethod(reference_dropout_bwd)

    def detail(self, device: torch.device) -> str:
        return "dense eager PyTorch"


register(ReferenceBackend())
