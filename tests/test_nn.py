"""Drop-in MultiheadAttention and the two-stream module."""
import copy

import pytest
import torch
from torch import nn

import janus_kernels as jk
from janus_kernels import _ext
from janus_kernels.nn import MultiheadAttention, TwoStreamSelfAttention, descriptor_from_dense
from janus_kernels.reference import reference_attention

pytestmark = pytest.mark.skipif(not _ext.available(), reason="compiled extension missing")


def _swap_attention(model: nn.Module) -> nn.Module:
    fused = copy.deepcopy(model)
    for name, mod in list(fused.named_modules()):
        for attr in ("self_attn", "multihead_attn"):
            old = getattr(mod, attr, None)
            if isinstance(old, nn.MultiheadAttention):
                new = MultiheadAttention(old.embed_dim, old.num_heads, dropout=old.dropout,
                                         batch_first=old.batch_first)
                new.load_state_dict(old.state_dict())
                setattr(mod, attr, new)
    return fused


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}




@pytest.mark.parametrize("batch_first", [True, False])
def test_transformer_encoder_causal_padding(batch_first, fused_calls):
    torch.manual_seed(0)
    E, H, B, L = 32, 4, 3, 13
    layer = nn.TransformerEncoderLayer(E, H, dim_feedforward=64, dropout=0.0,
                                       batch_first=batch_first)
    ref = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    fused = _swap_attention(ref)
    assert isinstance(fused.layers[0].self_attn, MultiheadAttention)
    x = torch.randn(B, L, E) if batch_first else torch.randn(L, B, E)
    lengths = torch.tensor([13, 7, 1])
    kpm = torch.arange(L)[None, :] >= lengths[:, None]
    causal = nn.Transformer.generate_square_subsequent_mask(L)
    outs = []
    for model in (ref, fused):
        xi = x.clone().requires_grad_()
        y = model(xi, mask=causal, src_key_padding_mask=kpm, is_causal=True)
        yb = y if batch_first else y.transpose(0, 1)
        valid = ~kpm
        loss = (yb[valid] ** 2).sum() * 1.5
        loss.backward()
        outs.append((yb[valid].detach(), xi.grad, _grads(model)))
    (y0, gx0, g0), (y1, gx1, g1) = outs
    assert fused_calls == ["causal", "causal"]  # both layers ran the fused kernel
    assert (y0 - y1).abs().max() < 1e-4
    assert (gx0 - gx1).abs().max() < 1e-4
    for n in g0:
        assert (g0[n] - g1[n]).abs().max() < 1e-3, n


def test_transformer_decoder_drop_in(fused_calls):
    torch.manual_seed(1)
    E, H, B, T, S = 32, 4, 2, 9, 11
    layer = nn.TransformerDecoderLayer(E, H, dim_feedforward=64, dropout=0.0, batch_first=True)
    ref = nn.TransformerDecoder(layer, 2)
    fused = _swap_attention(ref)
    tgt, mem = torch.randn(B, T, E), torch.randn(B, S, E)
    mem_kpm = torch.arange(S)[None, :] >= torch.tensor([11, 5])[:, None]
    causal = nn.Transformer.generate_square_subsequent_mask(T)
    y0 = ref(tgt, mem, tgt_mask=causal, memory_key_padding_mask=mem_kpm)
    y1 = fused(tgt, mem, tgt_mask=causal, memory_key_padding_mask=mem_kpm)
    assert fused_calls == ["causal", "key_padding"] * 2
    assert (y0 - y1).abs().max() < 1e-4


def test_dense_fallback_for_arbitrary_mask_and_weights():
    torch.manual_seed(2)
    ref = nn.MultiheadAttention(16, 2, batch_first=True)
    ours = MultiheadAttention(16, 2, batch_first=True)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 6, 16)
    odd = torch.rand(6, 6) > 0.5
    odd.fill_diagonal_(False)
    bias = torch.randn(6, 6)
    for m in (odd, bias):
        a = ref(x, x, x, attn_mask=m, need_weights=False)[0]
        b = ours(x, x, x, attn_mask=m, need_weights=False)[0]
        assert (a - b).abs().max() < 1e-5
    a, wa = ref(x, x, x)
    b, wb = ours(x, x, x)
    assert (a - b).abs().max() < 1e-5 and (wa - wb).abs().max() < 1e-6


def test_descriptor_recognition():
    L = 5
    causal_f = nn.Transformer.generate_square_subsequent_mask(L)
    causal_b = torch.ones(L, L, dtype=torch.bool).triu(1)
    kpm = torch.tensor([[False] * 3 + [True] * 2, [False] * 5])
    for m in (causal_f, causal_b):
        d = descriptor_from_dense(m, kpm, False, 2, L, L)
        assert d.family == "causal"
        expect = ~causal_b[None] & ~kpm[:, None, :]
        assert torch.equal(d.materialize(), expect)
    assert descriptor_from_dense(None, kpm, False, 2, L, L).family == "key_padding"
    holes = torch.tensor([[False, True, False, False, False]] * 2)
    assert descriptor_from_dense(None, holes, False, 2, L, L) is None


def test_unbatched_and_explicit_descriptor():
    torch.manual_seed(3)
    ref = nn.MultiheadAttention(16, 2)
    ours = MultiheadAttention(16, 2)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(6, 16)
    assert (ref(x, x, x, need_weights=False)[0] - ours(x, x, x, need_weights=False)[0]).abs().max() < 1e-5
    xb = torch.randn(6, 2, 16)
    d = jk.causal_mask([6, 6], 6)
    causal = torch.ones(6, 6, dtype=torch.bool).triu(1)
    a = ref(xb, xb, xb, attn_mask=causal, need_weights=False)[0]
    b = ours(xb, xb, xb, need_weights=False, mask=d)[0]
    assert (a - b).abs().max() < 1e-5


def test_two_stream_matches_dense():
    torch.manual_seed(4)
    E, H = 32, 4
    U, M = torch.tensor([5, 9]), torch.tensor([3, 6])
    desc = jk.janus_nar_mask(U, M)
    B, Lc, Lq = 2, desc.kv_len, desc.q_len - desc.kv_len
    mod = TwoStreamSelfAttention(E, H)
    c, q = torch.randn(B, Lc, E), torch.randn(B, Lq, E)
    oc, oq = mod(c, q, desc)
    rows = torch.cat([c, q], 1)
    hd = E // H
    qq = mod.q_proj(rows).view(B, -1, H, hd).transpose(1, 2)
    kk = mod.k_proj(c).view(B, Lc, H, hd).transpose(1, 2)
    vv = mod.v_proj(c).view(B, Lc, H, hd).transpose(1, 2)
    o = reference_attention(qq, kk, vv, desc.materialize()).transpose(1, 2).reshape(B, -1, E)
    o = mod.out_proj(o)
    assert (torch.cat([oc, oq], 1) - o).abs().max() < 1e-5
    with pytest.raises(ValueError, match="two-stream"):
        mod(c, q[:, :1], desc)
