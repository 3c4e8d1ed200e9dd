"""Score-modifier benchmark: attention forward + backward with logit softcapping (Gemma-2),
ALiBi and T5 relative-position biases, janus kernel vs the dense ways a user writes them.

Contenders, per modifier, same inputs, timed interleaved (benchmarks/common.py):

* ``janus``: ``jk.attention(q, k, v, causal_mask(lengths), softcap=..., rel_bias=...)`` -- the
  bias as its ``(H, Lq + Lk - 1)`` table (``janus_kernels.score_mods``), the gradient reaching
  the ALiBi slopes / T5 embedding through the table's gather;
* ``sdpa``: ``scaled_dot_product_attention`` with a dense float mask = bias + causal and padding
  ``-inf`` (B, H, L, L), built from the same table every call (so the bias gradient flows);
  not for softcap, which SDPA cannot express;
* ``eager``: matmul, softcap, + dense bias, masked_fill, softmax, matmul (HF's eager formula).

    python -m benchmarks.score_mods [--quick] [--timing quick|standard|full] [--json PATH]

Default shape: B=8, H=8, L=512, d=64, fp32, causal with real lengths uniform in [L/2, L].
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

import janus_kernels as jk
from janus_kernels import cpu_isa, score_mods

from .common import Settings, error_line, table_main, time_interleaved

MODS = ("none", "softcap", "alibi", "t5", "softcap+t5")
SHAPES = {"quick": (2, 2, 64, 16), "standard": (8, 8, 512, 64)}


def _tables(mod: str, H: int, L: int, leaf: torch.Tensor) -> Optional[torch.Tensor]:
    if "alibi" in mod:
        return score_mods.alibi_bias(leaf, L, L)
    if "t5" in mod:
        return score_mods.t5_bias(leaf, L, L, bidirectional=False, num_buckets=32,
                                  max_distance=128)
    return None


def contenders(mod: str, B: int, H: int, L: int, d: int, seed: int) -> Dict[str, Callable]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(L // 2, L + 1, (B,), generator=g)
    mask = jk.causal_mask(lengths, L)
    allowed = mask.materialize()[:, None]                       # (B, 1, L, L) for the dense ones
    q, k, v, do = (torch.randn(B, H, L, d, generator=g) for _ in range(4))
    leaves = [t.requires_grad_() for t in (q, k, v)]
    if "alibi" in mod:
        leaves.append(score_mods.alibi_slopes(H).requires_grad_())
    elif "t5" in mod:
        leaves.append((0.1 * torch.randn(H, 32, generator=g)).requires_grad_())
    softcap = 50.0 if "softcap" in mod else None
    scale = d ** -0.5
    diag = torch.arange(L)[None, :] - torch.arange(L)[:, None] + (L - 1)

    def grads(out):
        for t in leaves:
            t.grad = None
        out.backward(do)

    def janus():
        rel = _tables(mod, H, L, leaves[3]) if len(leaves) > 3 else None
        grads(jk.attention(*leaves[:3], mask, softcap=softcap, rel_bias=rel))

    def dense_bias():
        rel = _tables(mod, H, L, leaves[3]) if len(leaves) > 3 else None
        return None if rel is None else rel[:, diag]            # (H, L, L)

    def sdpa():
        bias = dense_bias()
        m = torch.zeros(B, 1, L, L).masked_fill(~allowed, float("-inf"))
        m = m if bias is None else m + bias[None]
        out = F.scaled_dot_product_attention(*leaves[:3], attn_mask=m)
        grads(torch.nan_to_num(out))                            # rows of padding: NaN -> 0

    def eager():
        s = torch.matmul(leaves[0], leaves[1].transpose(-1, -2)) * scale
        if softcap:
            s = softcap * torch.tanh(s / softcap)
        bias = dense_bias()
        if bias is not None:
            s = s + bias
        p = torch.softmax(s.masked_fill(~allowed, float("-inf")), -1).nan_to_num()
        grads(torch.matmul(p, leaves[2]))

    fns = {"janus": janus, "eager": eager}
    if not softcap:
        fns["sdpa"] = sdpa
    return fns


def run(settings: Settings, shape: str = "standard") -> Dict[str, Any]:
    B, H, L, d = SHAPES[shape]
    rows: List[Dict[str, Any]] = []
    for mod in MODS:
        fns = contenders(mod, B, H, L, d, settings.seed)
        row: Dict[str, Any] = {"mod": mod}
        try:
            timings = time_interleaved(fns, settings)
        except Exception as e:  # noqa: BLE001 - a failing modifier is a table entry
            rows.append(dict(row, note=f"failed: {error_line(e)}"))
            continue
        for name, t in timings.items():
            row[name] = t.ms
        for base in ("sdpa", "eager"):
            if base in row:
                row[f"x_{base}"] = row[base] / row["janus"]
        rows.append(row)
        print(f"  {mod}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in row.items()
                                       if isinstance(v, float) and not k.startswith("x_")),
              flush=True)
    notes = [f"B={B}, H={H}, L={L}, d={d}, fp32 causal (lengths in [{L // 2}, {L}]) fwd+bwd, "
             f"{torch.get_num_threads()} threads; janus backend "
             f"{jk.default_backend('attention', 'cpu', torch.float32, d, ('softcap', 'rel_bias'))}"
             f" at ISA level {cpu_isa.describe()}"]
    return {"rows": rows, "notes": notes}


COLUMNS = [("mod", "modifier"), ("janus", "janus ms"), ("sdpa", "sdpa + dense bias ms"),
           ("eager", "eager ms"), ("x_sdpa", "x sdpa"), ("x_eager", "x eager"),
           ("note", "note")]


def main(argv: Optional[Sequence[str]] = None) -> int:
    return table_main(argv, "python -m benchmarks.score_mods", __doc__, run, COLUMNS,
                      {"mod": str, "note": lambda x: x or ""})


if __name__ == "__main__":
    raise SystemExit(main())
