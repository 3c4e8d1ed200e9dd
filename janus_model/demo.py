"""`make demo`: the main job on bundled defaults. For now: the JANUS mask for a small batch,
drawn from its descriptor, and one fused attention call checked against the dense
3D-mask baseline."""
import time

import torch

import janus_kernels as jk
from janus_kernels.reference import reference_attention


def _draw(mask: torch.Tensor) -> str:
    return "\n".join("".join("X" if x else "." for x in row) for row in mask.tolist())


def main() -> None:
    U, M = torch.tensor([5, 4]), torch.tensor([3, 1])
    d = jk.janus_nar_mask(U, M)
    print(d)
    print("sample 0 (U=5, M=3): rows = 11 content + 3 query, keys = 11 content")
    print(_draw(d.materialize()[0]))
    print("tile classes (8x8 tiles; 0 skip, 1 partial, 2 full):", d.tile_class(8, 8)[0].tolist())

    g = torch.Generator().manual_seed(0)
    N = torch.randint(128, 257, (8,), generator=g)
    Mb = (0.55 * N).long()
    Ub = N + 2 - Mb
    d = jk.janus_nar_mask(Ub, Mb)
    q = torch.randn(8, 8, d.q_len, 64, generator=g)
    k = torch.randn(8, 8, d.kv_len, 64, generator=g)
    v = torch.randn(8, 8, d.kv_len, 64, generator=g)
    t0 = time.perf_counter()
    allowed = d.materialize()
    ref = reference_attention(q, k, v, allowed)
    t1 = time.perf_counter()
    out = jk.attention(q, k, v, d)
    t2 = time.perf_counter()
    print(f"\nJANUS NAR/AUX attention, B=8 H=8 d=64 Lq={d.q_len} Lk={d.kv_len} "
          f"(backend {jk.default_backend('cpu')}): dense baseline {1e3 * (t1 - t0):.1f} ms, "
          f"ours {1e3 * (t2 - t1):.1f} ms, max |diff| {(out - ref).abs().max():.2e}")


if __name__ == "__main__":
    main()
