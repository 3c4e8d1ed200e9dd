"""Smoke call of every op and dtype on the compiled CPU backend, against the reference backend.

Run by tests/test_portable_build.py under ``qemu-x86_64 -cpu Haswell`` (an AVX2 CPU with no
AVX-512, which traps on AVX-512 instructions): a build made with default flags on any x86-64
machine must load and run there, at the avx2 level. Usage::

    python tests/portable_smoke.py [expected_level]
"""
import sys

import torch

import janus_kernels as jk
from janus_kernels import cpu_isa
from janus_kernels.losses import janus_loss

TOL = {torch.float32: 2e-3, torch.bfloat16: 6e-2, torch.float16: 1e-2, torch.float64: 1e-9}


def close(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    err = (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
    scale = max(1.0, b.double().abs().max().item()) if b.numel() else 1.0
    if not err <= TOL[dtype] * scale:
        raise SystemExit(f"FAIL {what}: max error {err:.3g} > {TOL[dtype] * scale:.3g}")


def attention_case(dtype: torch.dtype, d: int) -> None:
    mask = jk.janus_nar_mask([5, 9], [3, 4])
    g = torch.Generator().manual_seed(d)
    q = torch.randn(2, 2, mask.q_len, d, generator=g).to(dtype)
    k = torch.randn(2, 1, mask.kv_len, d, generator=g).to(dtype)
    v = torch.randn(2, 1, mask.kv_len, d, generator=g).to(dtype)
    outs = {}
    for be in ("cpu", "reference"):
        ins = [t.clone().requires_grad_() for t in (q, k, v)]
        o = jk.attention(*ins, mask, backend=be)
        o.float().square().sum().backward()
        outs[be] = [o.detach()] + [t.grad for t in ins]
    for name, a, b in zip(("out", "dq", "dk", "dv"), outs["cpu"], outs["reference"]):
        close(a, b, dtype, f"attention {dtype} d={d} {name}")


def loss_case(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(1)
    ar, nar, aux = (torch.randn(n, 50, generator=g).to(dtype) for n in (9, 4, 4))
    ar_t, m_t = torch.randint(0, 50, (9,), generator=g), torch.randint(0, 50, (4,), generator=g)
    idx = torch.tensor([1, 2, 5, 7])
    res = {}
    for be in ("cpu", "reference"):
        xs = [t.clone().requires_grad_() for t in (ar, nar, aux)]
        total, _ = janus_loss(*xs, ar_t, m_t, idx, backend=be)
        kl = jk.symmetric_kl(xs[1], xs[2], backend=be)
        ce = jk.cross_entropy(xs[0], ar_t, label_smoothing=0.1, backend=be)
        (total + kl + ce).backward()
        res[be] = [total.detach(), kl.detach(), ce.detach()] + [t.grad for t in xs]
    for i, (a, b) in enumerate(zip(res["cpu"], res["reference"])):
        close(a, b, dtype, f"losses {dtype} output {i}")


def dropout_case(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(2)
    y, x = (torch.randn(37, 203, generator=g).to(dtype) for _ in range(2))
    res = {}
    for be in ("cpu", "reference"):
        yl = y.clone().requires_grad_()
        out = jk.dropout_add(yl, x, 0.3, seed=11, backend=be)
        out.float().square().sum().backward()
        res[be] = [out.detach(), yl.grad]
    for name, a, b in zip(("out", "dy"), res["cpu"], res["reference"]):
        if not torch.equal(a, b):   # the same Philox bits and roundings on every backend
            raise SystemExit(f"FAIL dropout_add {dtype} {name}: differs from the reference")


def main() -> None:
    expected = sys.argv[1] if len(sys.argv) > 1 else None
    print("cpu kernels:", cpu_isa.describe(), flush=True)
    level = cpu_isa.active_level()
    if expected is not None and level != expected:
        raise SystemExit(f"FAIL: expected ISA level {expected}, got {level}")
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for d in (32, 33):
            attention_case(dtype, d)
    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        loss_case(dtype)
        dropout_case(dtype)
    print(f"portable smoke: every op and dtype ok at level {level}")


if __name__ == "__main__":
    main()
