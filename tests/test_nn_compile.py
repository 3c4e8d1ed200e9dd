"""jnn.MultiheadAttention under torch.compile(fullgraph=True): causal (is_causal + attn_mask)
and key-padding masks are recognised without data-dependent branches (no graph break, the
fused op is in the graph), and a 2-layer model trains for a few steps with the same losses as
eager. The normal suite uses the aot_eager backend (graph capture, fake tensors and AOT
autograd, seconds); the inductor run (real codegen, which also asserts every custom op's
fake strides) is slow."""
import copy

import pytest
import torch
from torch import nn

from janus_kernels import _ext
from janus_kernels.nn import MultiheadAttention

pytestmark = pytest.mark.skipif(not _ext.available(), reason="compiled extension missing")

E, H, FF, B, L = 32, 4, 64, 3, 9


class _Recorder:
    """A compile backend that keeps the dynamo graphs and runs them through aot_eager."""

    def __init__(self):
        self.graphs = []

    def __call__(self, gm, example_inputs):
        from torch._dynamo.backends.common import aot_autograd  # noqa: F401
        from torch._dynamo.backends.registry import lookup_backend
        self.graphs.append(gm)
        return lookup_backend("aot_eager")(gm, example_inputs)

    def fused_calls(self) -> int:
        return sum(str(n.target).startswith("janus.attention_fwd") for g in self.graphs
                   for n in g.graph.nodes)


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    layer = nn.TransformerEncoderLayer(E, H, FF, dropout=0.0, batch_first=True)
    enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    for lay in enc.layers:
        fused = MultiheadAttention(E, H, batch_first=True)
        fused.load_state_dict(lay.self_attn.state_dict())
        lay.self_attn = fused
    return nn.ModuleDict({"enc": enc, "head": nn.Linear(E, 5)})


def _batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, L, E, generator=g)
    lengths = torch.tensor([L, 6, 2])
    kpm = torch.arange(L)[None, :] >= lengths[:, None]
    y = torch.randint(0, 5, (B, L), generator=g)
    return x, kpm, y


def _step_fn(model: nn.Module):
    # bool like the key padding: mixing mask types makes torch warn, a graph break
    causal = torch.ones(L, L, dtype=torch.bool).triu(1)

    def loss_fn(x, kpm, y):
        h = model["enc"](x, mask=causal, src_key_padding_mask=kpm, is_causal=True)
        logits = model["head"](h)
        keep = (~kpm).float()
        ce = nn.functional.cross_entropy(logits.transpose(1, 2), y, reduction="none")
        return (ce * keep).sum() / keep.sum()
    return loss_fn


def _train(model, loss_fn, steps: int = 3):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for s in range(steps):
        opt.zero_grad()
        loss = loss_fn(*_batch(s))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _compiled_matches_eager(backend, steps):
    eager = _model()
    compiled = copy.deepcopy(eager)
    ref = _train(eager, _step_fn(eager), steps)
    got = _train(compiled, torch.compile(_step_fn(compiled), fullgraph=True, backend=backend),
                 steps)
    assert got == pytest.approx(ref, abs=1e-5, rel=1e-5)
    for (n, a), b in zip(eager.named_parameters(), compiled.parameters()):
        assert (a - b).abs().max() < 1e-5, n


def test_two_layer_model_trains_compiled_like_eager():
    """The acceptance test, aot_eager backend. Today's main: 'Data dependent operator'
    (aten.equal in the key-padding recognition)."""
    rec = _Recorder()
    _compiled_matches_eager(rec, steps=3)
    assert rec.fused_calls() == 2       # both layers run the fused kernel inside the graph


@pytest.mark.slow
def test_two_layer_model_trains_compiled_like_eager_inductor():
    """Inductor, which also checks the custom ops' fake strides against the real outputs
    (the (B, L, H, d).transpose(1, 2) layout; needs attention_bwd's fake to say contiguous)."""
    _compiled_matches_eager("inductor", steps=3)


@pytest.mark.parametrize("case", ["key_padding_holes", "causal_kpm", "unbatched_causal",
                                  "seq_first", "float_kpm"])
def test_module_compiles_fullgraph(case):
    torch.manual_seed(1)
    batch_first = case != "seq_first"
    ref = nn.MultiheadAttention(E, H, batch_first=batch_first)
    ours = MultiheadAttention(E, H, batch_first=batch_first)
    ours.load_state_dict(ref.state_dict())
    causal = nn.Transformer.generate_square_subsequent_mask(L)
    kpm = torch.arange(L)[None, :] >= torch.tensor([L, 5, 1])[:, None]
    x = torch.randn(B, L, E) if batch_first else torch.randn(L, B, E)
    kw = dict(attn_mask=causal, is_causal=True, key_padding_mask=kpm)
    if case == "key_padding_holes":
        kw = dict(key_padding_mask=torch.rand(B, L) > 0.6)
    elif case == "unbatched_causal":
        x, kw = x[0], dict(attn_mask=causal, is_causal=True)
    elif case == "float_kpm":
        kw = dict(key_padding_mask=torch.zeros(B, L).masked_fill(kpm, float("-inf")))
    rec = _Recorder()
    f = torch.compile(lambda x: ours(x, x, x, need_weights=False, **kw)[0], fullgraph=True,
                      backend=rec)
    xi, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    got, want = f(xi), ref(xr, xr, xr, need_weights=False, **kw)[0]
    assert (got - want).abs().max() < 1e-5
    got.sum().backward()
    want.sum().backward()
    assert (xi.grad - xr.grad).abs().max() < 1e-4
    assert rec.fused_calls() == 1
