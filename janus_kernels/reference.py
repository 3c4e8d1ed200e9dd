"""Dense 3D-mask baselines: the authors' way of doing attention, used as test oracles and
as the baselines the benchmarks compare against. Everything here materializes
(B, Lq, Lk) masks and (B, H, Lq, Lk) scores on purpose."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ["reference_attention", "sdpa_attention", "authors_janus_masks",
           "authors_mask_to_allowed"]


def _expand_kv(k: torch.Tensor, H: int) -> torch.Tensor:
    Hkv = k.shape[1]
    return k if Hkv == H else k.repeat_interleave(H // Hkv, dim=1)


def _scores(qc: torch.Tensor, kc: torch.Tensor, scale: float, softcap: Optional[float],
            bias: Optional[torch.Tensor]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """scale Q K^T, then softcap * tanh(. / softcap), then + bias; also tanh (for the
    softcap's derivative 1 - t^2) when softcap is on."""
    s = torch.matmul(qc, kc.transpose(-1, -2)) * scale
    t = None
    if softcap:
        t = torch.tanh(s / softcap)
        s = softcap * t
    if bias is not None:
        s = s + bias.to(s.dtype)
    return s, t


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        allowed: torch.Tensor, *, scale: Optional[float] = None,
                        upcast: bool = True, keep: Optional[torch.Tensor] = None,
                        dropout_p: float = 0.0, return_lse: bool = False,
                        softcap: Optional[float] = None, bias: Optional[torch.Tensor] = None):
    """Eager bmm + masked_fill + softmax + bmm with a dense bool mask (True = may attend),
    broadcast over heads. Fully masked rows give zeros (lse = -inf).

    upcast: compute in float32 (float64 stays float64) and cast back, the accurate
    reference; False computes in the input precision (the same-precision reference).
    keep: optional dense keep-mask (B, H, Lq, Lk) for dropout with probability dropout_p.
    softcap, bias: score modifiers, s = softcap * tanh(scale q.k / softcap) + bias, with
    bias a dense tensor broadcastable to (B, H, Lq, Lk).
    """
    B, H, Lq, d = q.shape
    scale = d ** -0.5 if scale is None else scale
    dt = q.dtype
    ct = (torch.float64 if dt == torch.float64 else torch.float32) if upcast else dt
    qc, kc, vc = q.to(ct), _expand_kv(k, H).to(ct), _expand_kv(v, H).to(ct)
    s, _ = _scores(qc, kc, scale, softcap, bias)
    m = allowed[:, None, :, :] if allowed.dim() == 3 else allowed
    s = s.masked_fill(~m, float("-inf"))
    lse = torch.logsumexp(s.float() if ct != torch.float64 else s, dim=-1)
    p = torch.softmax(s, dim=-1)
    p = torch.where(m, p, torch.zeros((), dtype=p.dtype, device=p.device))  # NaN rows -> 0
    if keep is not None and dropout_p > 0:
        p = p * keep.to(p.dtype) / (1.0 - dropout_p)
    o = torch.matmul(p, vc).to(dt)
    return (o, lse) if return_lse else o


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor,
                   *, scale: Optional[float] = None) -> torch.Tensor:
    """torch's scaled_dot_product_attention with the dense (B, 1, Lq, Lk) bool mask; fully
    masked rows are zeroed afterwards (SDPA would give NaN there)."""
    H = q.shape[1]
    m = allowed[:, None] if allowed.dim() == 3 else allowed
    o = F.scaled_dot_product_attention(q, _expand_kv(k, H), _expand_kv(v, H), attn_mask=m,
                                       scale=scale)
    any_key = m.any(-1, keepdim=True)
    return torch.where(any_key, o, torch.zeros((), dtype=o.dtype, device=o.device))


def authors_janus_masks(U: torch.Tensor, M: torch.Tensor, content_len: int,
                        query_len: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """A faithful re-creation of the authors' per-sample mask builder (spec §4.1): a Python
    loop over the batch with host syncs, a per-call cache keyed by (a, b) = (U+2M, M), small
    dense blocks concatenated into float32 matrices with 1 = blocked, padding rows opened
    to every real key. Returns (content (B, Lc, Lc), query (B, Lq, Lc)) float32.
    Written from the spec's description, not from the authors' code."""
    dev = U.device
    cache = {}
    cmasks, qmasks = [], []
    for b in range(U.shape[0]):
        a, m = int(U[b] + 2 * M[b]), int(M[b])           # two device->host syncs per sample
        key = (a, m)
        if key not in cache:
            u = a - 2 * m
            ones = lambda r, c: torch.ones(r, c, device=dev)
            zeros = lambda r, c: torch.zeros(r, c, device=dev)
            tri_lo = torch.tril(torch.ones(m, m, device=dev))       # k <= r
            tri_lo_strict = torch.tril(torch.ones(m, m, device=dev), -1)  # k < r
            # content rows: V and M rows see V|M, not G; G row r sees V, M(k>r), G(k<=r)
            vm_rows = torch.cat([zeros(u + m, u + m), ones(u + m, m)], 1)
            g_rows = torch.cat([zeros(m, u), tri_lo, 1 - tri_lo], 1)
            content = torch.ones(content_len, content_len, device=dev)
            content[:a, :a] = torch.cat([vm_rows, g_rows], 0)
            content[a:, :a] = 0                                      # padding rows: all real keys
            # query r: V, M(k>=r), G(k<r)
            q_rows = torch.cat([zeros(m, u), tri_lo_strict, 1 - tri_lo_strict], 1)
            query = torch.ones(query_len, content_len, device=dev)
            query[:m, :a] = q_rows
            query[m:, :a] = 0
            cache[key] = (content, query)
        c, q = cache[key]
        cmasks.append(c.clone())
        qmasks.append(q.clone())
    return torch.stack(cmasks), torch.stack(qmasks)


def authors_mask_to_allowed(content: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Stack the authors' two float masks (1 = blocked) into one bool (B, Lc+Lq, Lc) mask of
    allowed entries, in the fused [content rows ; query rows] row order."""
    return torch.cat([content, query], dim=1) < 0.5


def reference_attention_backward(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                                 v: torch.Tensor, allowed: torch.Tensor, *,
                                 scale: Optional[float] = None,
                                 keep: Optional[torch.Tensor] = None, dropout_p: float = 0.0,
                                 out: Optional[torch.Tensor] = None,
                                 softcap: Optional[float] = None,
                                 bias: Optional[torch.Tensor] = None):
    """Dense gradients of `reference_attention` by the explicit formulas (fp32, fp64 kept):
    P = softmax(scale QK^T) masked, P_d = P * keep / (1-p), dV = P_d^T dO,
    dP = (dO V^T) * keep / (1-p), dS = P * (dP - rowsum(P * dP)), dQ = scale dS K,
    dK = scale dS^T Q; grouped-query heads are summed into their k/v head. With `out` (the
    forward's output) the row term rowsum(P * dP) is taken as rowsum(dO * out), as the
    flash kernels do; the two are equal when out is the forward's output, and the attention
    op relies on the second form for the lse gradient (janus_kernels/attention.py).
    With score modifiers (see reference_attention) dS is the gradient w.r.t. the final score
    (returned as a fourth output, (B, H, Lq, Lk) in the compute dtype, when ``bias`` is
    given) and the softcap multiplies it by 1 - tanh^2 before dQ and dK."""
    B, H, Lq, d = q.shape
    Hkv = k.shape[1]
    scale = d ** -0.5 if scale is None else scale
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    qc, kc, vc, g = q.to(ct), _expand_kv(k, H).to(ct), _expand_kv(v, H).to(ct), dout.to(ct)
    m = allowed[:, None] if allowed.dim() == 3 else allowed
    s, t = _scores(qc, kc, scale, softcap, bias)
    s = s.masked_fill(~m, float("-inf"))
    p = torch.softmax(s, dim=-1)
    p = torch.where(m, p, torch.zeros((), dtype=ct, device=p.device))
    drop = 1.0
    if keep is not None and dropout_p > 0:
        drop = keep.to(ct) / (1.0 - dropout_p)
    pd = p * drop
    dv = torch.matmul(pd.transpose(-1, -2), g)
    dp = torch.matmul(g, vc.transpose(-1, -2)) * drop
    delta = (p * dp).sum(-1, keepdim=True) if out is None else \
        (g * out.to(ct)).sum(-1, keepdim=True)
    ds = p * (dp - delta)
    ds_raw = ds if t is None else ds * (1 - t * t)
    dq = torch.matmul(ds_raw, kc) * scale
    dk = torch.matmul(ds_raw.transpose(-1, -2), qc) * scale
    if Hkv != H:
        dk = dk.view(B, Hkv, H // Hkv, *dk.shape[2:]).sum(2)
        dv = dv.view(B, Hkv, H // Hkv, *dv.shape[2:]).sum(2)
    grads = (dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype))
    return grads + (ds,) if bias is not None else grads
