"""jnn.MultiheadAttention as a drop-in: every input torch's module accepts gives torch's
answer (fused where a descriptor expresses the masks, torch's path elsewhere), bad
combinations raise as torch does, TorchScript works, and the host-sync-free path (used under
torch.compile and on GPUs) is exact too."""
import pytest
import torch
from torch import nn

import janus_kernels as jk
from janus_kernels import _ext
from janus_kernels.nn import MultiheadAttention

pytestmark = pytest.mark.skipif(not _ext.available(), reason="compiled extension missing")

E, H = 16, 2


def _pair(batch_first=True, **kw):
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(E, H, batch_first=batch_first, **kw)
    ours = MultiheadAttention(E, H, batch_first=batch_first, **kw)
    ours.load_state_dict(ref.state_dict())
    return ref, ours




@pytest.fixture(params=["eager-cpu", "no-host-reads"])
def mode(request, monkeypatch):
    """'no-host-reads' runs the branch used under torch.compile and on GPUs (nothing read on
    the host) on CPU tensors."""
    if request.param == "no-host-reads":
        monkeypatch.setattr(MultiheadAttention, "_reads_values", staticmethod(lambda t: False))
    return request.param


def _close(a, b, tol=1e-5):
    assert a.shape == b.shape and (a - b).abs().max() < tol, (a - b).abs().max()


@pytest.mark.parametrize("batch_first", [True, False])
def test_unbatched_with_fallback_mask(batch_first):
    """Today's main: 'The shape of the 2D attn_mask is torch.Size([7, 7]), but should be
    (1, 1).' -- the fallback got the batched, transposed tensors."""
    ref, ours = _pair(batch_first)
    x = torch.randn(7, E)
    odd = torch.rand(7, 7) > 0.5
    odd.fill_diagonal_(False)
    kpm = torch.tensor([False, True] * 3 + [False])
    for kw in (dict(attn_mask=odd), dict(key_padding_mask=kpm, attn_mask=odd),
               dict(attn_mask=torch.randn(7, 7))):
        _close(ref(x, x, x, need_weights=False, **kw)[0],
               ours(x, x, x, need_weights=False, **kw)[0])


def test_unbatched_fused(fused_calls, mode):
    ref, ours = _pair(True)
    x = torch.randn(7, E)
    causal = nn.Transformer.generate_square_subsequent_mask(7)
    kpm = torch.arange(7) >= 5
    for kw in (dict(attn_mask=causal, is_causal=True), dict(key_padding_mask=kpm),
               dict(attn_mask=causal, is_causal=True, key_padding_mask=kpm)):
        _close(ref(x, x, x, need_weights=False, **kw)[0],
               ours(x, x, x, need_weights=False, **kw)[0])
    assert fused_calls == ["causal", "key_padding", "causal"]


def test_nested_tensor_input_falls_back():
    """Today's main: 'NestedTensorImpl doesn't support sizes' (nn.py:115)."""
    ref, ours = _pair(True)
    ref.eval(), ours.eval()
    nt = torch.nested.nested_tensor([torch.randn(5, E), torch.randn(3, E)])
    with torch.no_grad():
        a = ref(nt, nt, nt, need_weights=False)[0]
        b = ours(nt, nt, nt, need_weights=False)[0]
    assert b.is_nested
    _close(a.to_padded_tensor(0.0), b.to_padded_tensor(0.0))


def test_torchscript():
    """Today's main: torch.jit.script fails on the keyword-only mask=. Scripting gives torch's
    implementation over the same parameters, alone and inside a TransformerEncoder."""
    ref, ours = _pair(True)
    scripted = torch.jit.script(ours)
    x = torch.randn(2, 5, E)
    kpm = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    _close(scripted(x, x, x, key_padding_mask=kpm)[0], ref(x, x, x, key_padding_mask=kpm)[0])
    assert scripted.in_proj_weight is ours.in_proj_weight     # same parameters
    layer = nn.TransformerEncoderLayer(E, H, 32, dropout=0.0, batch_first=True)
    enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    for lay in enc.layers:
        lay.self_attn = MultiheadAttention(E, H, batch_first=True)
    expect = enc(x, src_key_padding_mask=kpm)
    scripted_enc = torch.jit.script(enc)
    _close(scripted_enc(x, src_key_padding_mask=kpm), expect)


def test_descriptor_with_torch_masks_raises():
    """Today's main silently ignored attn_mask (and key_padding_mask) next to mask=."""
    _, ours = _pair(True)
    x = torch.randn(2, 4, E)
    d = jk.causal_mask([4, 4], 4)
    causal = torch.ones(4, 4, dtype=torch.bool).triu(1)
    for kw in (dict(attn_mask=causal), dict(key_padding_mask=torch.zeros(2, 4, dtype=torch.bool)),
               dict(attn_mask=causal, is_causal=True)):
        with pytest.raises(ValueError, match="mask= .* replaces attn_mask"):
            ours(x, x, x, need_weights=False, mask=d, **kw)
    with pytest.raises(TypeError, match="MaskDescriptor"):
        ours(x, x, x, need_weights=False, mask=causal)


@pytest.mark.parametrize("need_weights", [False, True])
def test_is_causal_without_attn_mask_raises(need_weights):
    """torch raises RuntimeError('Need attn_mask if specifying the is_causal hint'); today's
    main accepted it on the fused path."""
    ref, ours = _pair(True)
    x = torch.randn(2, 4, E)
    for mod in (ref, ours):
        with pytest.raises(RuntimeError, match="Need attn_mask"):
            mod(x, x, x, need_weights=need_weights, is_causal=True)


@pytest.mark.parametrize("batch_first", [True, False])
def test_key_padding_any_pattern_fused_and_exact(batch_first, fused_calls, mode):
    """Holes and left padding in the key padding (no causal mask) still run fused: the kept
    keys are gathered to the front. Gradients match too."""
    ref, ours = _pair(batch_first)
    B, L, S = 3, 5, 7
    kpm = torch.tensor([[False, True, False, False, True, False, True],
                        [True, True, False, False, False, False, False],
                        [False] * 5 + [True] * 2])
    q = torch.randn(B, L, E) if batch_first else torch.randn(L, B, E)
    kv = torch.randn(B, S, E) if batch_first else torch.randn(S, B, E)
    outs = []
    for mod in (ref, ours):
        qi, ki = q.clone().requires_grad_(), kv.clone().requires_grad_()
        o = mod(qi, ki, ki, key_padding_mask=kpm, need_weights=False)[0]
        (o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum().backward()
        outs.append((o, qi.grad, ki.grad, mod.in_proj_weight.grad))
    for a, b in zip(*outs):
        _close(a, b)
    assert fused_calls == ["key_padding"]


def test_causal_with_holes(fused_calls, mode):
    """Causal + key padding that is not right-padded has no descriptor: torch's path when the
    mask can be read (eager CPU), a device-side assert otherwise -- never a wrong answer."""
    ref, ours = _pair(True)
    x = torch.randn(2, 5, E)
    causal = nn.Transformer.generate_square_subsequent_mask(5)
    kpm = torch.tensor([[False, True, False, False, False], [False] * 5])
    if mode == "no-host-reads":
        with pytest.raises(RuntimeError, match="not right-padded"):
            ours(x, x, x, attn_mask=causal, is_causal=True, key_padding_mask=kpm,
                 need_weights=False)
        return
    _close(ref(x, x, x, attn_mask=causal, is_causal=True, key_padding_mask=kpm,
               need_weights=False)[0],
           ours(x, x, x, attn_mask=causal, is_causal=True, key_padding_mask=kpm,
                need_weights=False)[0])
    assert fused_calls == []


def test_causal_right_padded_fused(fused_calls, mode):
    ref, ours = _pair(False)
    x = torch.randn(6, 3, E)
    causal = nn.Transformer.generate_square_subsequent_mask(6)
    kpm = torch.arange(6)[None, :] >= torch.tensor([6, 4, 1])[:, None]
    _close(ref(x, x, x, attn_mask=causal, is_causal=True, key_padding_mask=kpm,
               need_weights=False)[0],
           ours(x, x, x, attn_mask=causal, is_causal=True, key_padding_mask=kpm,
                need_weights=False)[0])
    assert fused_calls == ["causal"]


def test_attn_mask_without_hint_read_only_where_free(fused_calls, mode):
    """An attn_mask without is_causal is read only where that is free; elsewhere it goes to
    torch's (exact) path."""
    ref, ours = _pair(True)
    x = torch.randn(2, 5, E)
    causal = nn.Transformer.generate_square_subsequent_mask(5)
    _close(ref(x, x, x, need_weights=False, attn_mask=causal)[0],
           ours(x, x, x, need_weights=False, attn_mask=causal)[0])
    assert fused_calls == ([] if mode == "no-host-reads" else ["causal"])


def test_float_key_padding(fused_calls, mode):
    """0/-inf float key padding (what nn.TransformerEncoder passes on) runs fused; a float
    bias goes to torch's path where it can be read, else fails a device-side assert."""
    ref, ours = _pair(True)
    x = torch.randn(2, 5, E)
    fkpm = torch.zeros(2, 5).masked_fill(torch.tensor([[0, 0, 1, 0, 1], [0] * 4 + [1]]) > 0,
                                         float("-inf"))
    _close(ref(x, x, x, need_weights=False, key_padding_mask=fkpm)[0],
           ours(x, x, x, need_weights=False, key_padding_mask=fkpm)[0])
    assert fused_calls == ["key_padding"]
    bias = fkpm.clone()
    bias[0, 0] = 0.5
    if mode == "no-host-reads":
        with pytest.raises(RuntimeError, match="additive bias"):
            ours(x, x, x, need_weights=False, key_padding_mask=bias)
    else:
        _close(ref(x, x, x, need_weights=False, key_padding_mask=bias)[0],
               ours(x, x, x, need_weights=False, key_padding_mask=bias)[0])


@pytest.mark.parametrize("kw", [
    dict(attn_mask=torch.zeros(3, 3, dtype=torch.bool)),            # wrong shape
    dict(key_padding_mask=torch.zeros(2, 4, dtype=torch.bool)),      # wrong shape
    dict(key_padding_mask=torch.zeros(2, 5, dtype=torch.long)),      # wrong dtype
])
def test_bad_masks_get_torchs_error(kw):
    ref, ours = _pair(True)
    x = torch.randn(2, 5, E)
    errors = []
    for mod in (ref, ours):
        with pytest.raises((RuntimeError, AssertionError, ValueError)) as e:
            mod(x, x, x, need_weights=False, **kw)
        errors.append(type(e.value))
    assert errors[0] == errors[1]


def test_no_host_reads_off_the_cpu(fused_calls):
    """On a GPU the module must not sync (issue 15 item 5: bool(...), torch.equal, .cpu() on
    every masked call). Meta tensors stand in: any value read on them raises, so running
    fused on them proves the masks are never read on the host."""
    with pytest.raises((RuntimeError, NotImplementedError)):
        bool(torch.zeros(1, device="meta"))         # the premise: reads raise on meta
    ours = MultiheadAttention(E, H, batch_first=True, device="meta")
    x = torch.randn(3, 5, E, device="meta")
    causal = nn.Transformer.generate_square_subsequent_mask(5, device="meta")
    kpm = torch.zeros(3, 5, dtype=torch.bool, device="meta")
    for kw in (dict(attn_mask=causal, is_causal=True, key_padding_mask=kpm),
               dict(key_padding_mask=kpm), dict(key_padding_mask=kpm.float())):
        out = ours(x, x, x, need_weights=False, **kw)[0]
        assert out.shape == x.shape and out.device.type == "meta"
    assert fused_calls == ["causal", "key_padding", "key_padding"]
