"""torch.library.opcheck on the attention custom ops (janus::attention_fwd / attention_bwd)
with the layouts models hand them: contiguous, (B, L, H, d).transpose(1, 2), expanded
(stride 0) and sliced. opcheck compares every fake (meta) implementation with the real
output -- shape, dtype and strides -- which is what torch.compile relies on."""
import pytest
import torch

import janus_kernels as jk
from janus_kernels import _ext

pytestmark = pytest.mark.skipif(not _ext.available(), reason="compiled extension missing")


def _layout(shape, layout, g):
    B, H, L, d = shape
    if layout == "transposed":
        return torch.randn(B, L, H, d, generator=g).transpose(1, 2)
    if layout == "expanded":
        return torch.randn(1, H, L, d, generator=g).expand(B, H, L, d)
    if layout == "sliced":
        return torch.randn(B, H, L + 2, d + 4, generator=g)[:, :, 1:L + 1, 2:d + 2]
    return torch.randn(B, H, L, d, generator=g)


def _fast_backends():
    """Usable backends that are not interpreted (opcheck calls each op many times)."""
    interpreted = set() if torch.cuda.is_available() else {"triton"}
    return sorted(b for b, why in jk.available_backends("cpu").items()
                  if why == "yes" and b not in interpreted)


@pytest.mark.parametrize("backend", _fast_backends())
@pytest.mark.parametrize("family,layout", [
    ("janus_nar", "contiguous"), ("janus_nar", "transposed"), ("janus_nar", "expanded"),
    ("janus_nar", "sliced"), ("permutation", "transposed")])
def test_opcheck_attention_layouts(backend, layout, family):
    g = torch.Generator().manual_seed(0)
    if family == "janus_nar":
        desc = jk.janus_nar_mask([3, 4], [2, 1])
    else:
        desc = jk.permutation_mask(torch.stack([torch.randperm(5, generator=g)
                                                for _ in range(2)]), [5, 3])
    B, H, Hkv, d = 2, 2, 1, 8
    q = _layout((B, H, desc.q_len, d), layout, g).requires_grad_()
    k = _layout((B, Hkv, desc.kv_len, d), layout, g).requires_grad_()
    v = _layout((B, Hkv, desc.kv_len, d), layout, g).requires_grad_()
    common = (desc.params, desc.rank, desc.q_split, int(desc.kind), 0.35, 0.0, None, backend)
    torch.library.opcheck(torch.ops.janus.attention_fwd.default, (q, k, v) + common)
    out, lse = torch.ops.janus.attention_fwd(q.detach(), k.detach(), v.detach(), *common)
    dout = _layout(tuple(out.shape), layout, g)
    torch.library.opcheck(torch.ops.janus.attention_bwd.default,
                          (dout, q.detach(), k.detach(), v.detach(), out, lse) + common)
