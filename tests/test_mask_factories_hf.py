"""hf_mask, document_mask and varlen_mask (janus_kernels/mask_factories_hf.py): materialize()
against a direct dense construction of the rule (and against transformers' own mask functions
where transformers is installed), the descriptor fields they set, torch.compile, bad input."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

import janus_kernels as jk
from janus_kernels.masks import Field, Kind

from _mask_cases_hf import docs_from_lengths, padding_mask


def hf_rule_dense(am, q_len, kv_len, causal, window, chunk, q_offset):
    """HF's rule written out densely: (B, q_len, kv_len) bool."""
    B = am.shape[0]
    pos = (q_offset[:, None] + torch.arange(q_len))[:, :, None]          # (B, Lq, 1)
    j = torch.arange(kv_len)[None, None, :]
    ok = am.bool()[:, None, :].expand(B, q_len, kv_len)
    if causal:
        ok = ok & (j <= pos)
        if window is not None:
            ok = ok & (j > pos - window)
    elif window is not None:
        ok = ok & ((pos - j).abs() <= window)
    if chunk is not None:
        left = (am.cumsum(-1) == 0).sum(-1)[:, None, None]
        ok = ok & (torch.div(j - left, chunk, rounding_mode="floor")
                   == torch.div(pos - left, chunk, rounding_mode="floor"))
    return ok


def hf_library_dense(am, q_len, kv_len, causal, window, chunk, q_offset):
    """The same from transformers.masking_utils' own index functions (vectorized)."""
    mu = pytest.importorskip("transformers.masking_utils")
    fns = [mu.padding_mask_function(am.bool())]
    if causal:
        fns.append(mu.causal_mask_function)
        if window is not None:
            fns.append(mu.sliding_window_overlay(window))
    else:
        fns.append(mu.bidirectional_mask_function)
        if window is not None:
            fns.append(mu.sliding_window_bidirectional_overlay(window))
    if chunk is not None:
        left = (am.cumsum(dim=-1) == torch.zeros_like(am)).sum(dim=-1)   # as create_chunked_causal_mask
        fns.append(mu.chunked_overlay(chunk, left))
    fn = mu.and_masks(*fns)
    B = am.shape[0]
    b = torch.arange(B)[:, None, None]
    qi = (q_offset[:, None] + torch.arange(q_len))[:, :, None]
    kj = torch.arange(kv_len)[None, None, :]
    return fn(b, None, qi, kj).expand(B, q_len, kv_len)


@st.composite
def hf_case(draw):
    B = draw(st.integers(1, 4))
    kv_len = draw(st.integers(1, 40))
    q_len = draw(st.sampled_from([1, kv_len, draw(st.integers(1, kv_len))]))
    runs = []
    for _ in range(B):
        s = draw(st.integers(0, kv_len))
        runs.append((s, draw(st.integers(s, kv_len))))
    causal = draw(st.booleans())
    window = draw(st.one_of(st.none(), st.integers(1, 12)))
    chunk = draw(st.one_of(st.none(), st.integers(1, 12)))
    offs = draw(st.one_of(st.none(), st.lists(st.integers(-3, kv_len), min_size=B, max_size=B)))
    return padding_mask(runs, kv_len), q_len, kv_len, causal, window, chunk, offs


@settings(max_examples=150, deadline=None)
@given(hf_case())
def test_hf_mask_equals_hf_rule(case):
    am, q_len, kv_len, causal, window, chunk, offs = case
    q_offset = None if offs is None else torch.tensor(offs)
    d = jk.hf_mask(am, q_len, kv_len, causal=causal, sliding_window=window, chunk_size=chunk,
                   q_offset=q_offset)
    off = torch.full((am.shape[0],), kv_len - q_len) if offs is None else q_offset
    want = hf_rule_dense(am, q_len, kv_len, causal, window, chunk, off)
    assert torch.equal(d.materialize(), want)
    assert d.kind == (Kind.DOCUMENTS if chunk is not None else Kind.WINDOW)
    assert d.q_len == q_len and (d.field(Field.ROWS0) == q_len).all()   # every row computed


@settings(max_examples=60, deadline=None)
@given(hf_case())
def test_hf_rule_is_what_transformers_does(case):
    am, q_len, kv_len, causal, window, chunk, offs = case
    off = torch.full((am.shape[0],), kv_len - q_len) if offs is None else torch.tensor(offs)
    assert torch.equal(hf_rule_dense(am, q_len, kv_len, causal, window, chunk, off),
                       hf_library_dense(am, q_len, kv_len, causal, window, chunk, off))


def test_hf_mask_fields_and_no_mask():
    d = jk.hf_mask(padding_mask([(3, 8), (0, 6)], 8), 8, 8)
    assert d.field(Field.KEY_START).tolist() == [3, 0]
    assert d.field(Field.KV_LEN).tolist() == [3 + 5, 6]
    e = jk.hf_mask(None, 1, 5, batch_size=2)
    assert e.materialize().all() and e.batch_size == 2
    f = jk.hf_mask(None, 3, 5, q_offset=torch.tensor([0, 2]))
    assert f.materialize()[0].sum(-1).tolist() == [1, 2, 3]
    assert f.materialize()[1].sum(-1).tolist() == [3, 4, 5]
    g = jk.hf_mask(padding_mask([(0, 0)], 4), 4, 4)       # a sample with no real key
    assert not g.materialize().any()


def test_hf_mask_traces_fullgraph():
    am = padding_mask([(2, 9), (0, 9)], 9)

    @torch.compile(fullgraph=True, backend="eager")
    def build(am, off):
        d = jk.hf_mask(am, 3, 9, q_offset=off, sliding_window=4, chunk_size=3)
        return d.params, d.rank

    off = torch.tensor([6, 6])
    p, r = build(am, off)
    d = jk.hf_mask(am, 3, 9, q_offset=off, sliding_window=4, chunk_size=3)
    assert torch.equal(p, d.params) and torch.equal(r, d.rank)


def _docs_dense(qd, kd, causal, window):
    ok = (qd[:, :, None] == kd[:, None, :]) & (qd[:, :, None] >= 0) & (kd[:, None, :] >= 0)
    i = torch.arange(qd.shape[1])[None, :, None]
    j = torch.arange(kd.shape[1])[None, None, :]
    if causal:
        ok = ok & (j <= i) & ((j > i - window) if window else True)
    elif window:
        ok = ok & ((i - j).abs() <= window)
    return ok


@settings(max_examples=100, deadline=None)
@given(B=st.integers(1, 3), L=st.integers(1, 30), seed=st.integers(0, 2 ** 20),
       causal=st.booleans(), window=st.one_of(st.none(), st.integers(1, 6)))
def test_document_mask_equals_dense(B, L, seed, causal, window):
    g = torch.Generator().manual_seed(seed)
    lead = torch.randint(0, L + 1, (B,), generator=g).tolist()
    lens = []
    for b in range(B):
        left, cur = L - lead[b], []
        while left > 0 and torch.rand(1, generator=g) < 0.8:
            n = int(torch.randint(1, left + 1, (1,), generator=g))
            cur.append(n)
            left -= n
        lens.append(cur)
    docs = docs_from_lengths(lens, L, lead)
    d = jk.document_mask(docs, causal=causal, sliding_window=window)
    assert torch.equal(d.materialize(), _docs_dense(docs, docs, causal, window))


def test_document_mask_cross_lengths_and_varlen():
    qd = torch.tensor([[0, 0, 1, 2, 2]])
    kd = torch.tensor([[-1, 0, 1, 1, 1, 2, -1]])
    d = jk.document_mask(qd, kd)
    assert torch.equal(d.materialize(), _docs_dense(qd, kd, False, None))
    v = jk.varlen_mask(torch.tensor([0, 2, 3, 5]), torch.tensor([0, 1, 4, 7]))
    want = _docs_dense(torch.tensor([[0, 0, 1, 2, 2]]), torch.tensor([[0, 1, 1, 1, 2, 2, 2]]),
                       False, None)
    assert torch.equal(v.materialize(), want)
    c = jk.varlen_mask(torch.tensor([0, 3, 3, 5]), causal=True)
    assert torch.equal(c.materialize(), _docs_dense(torch.tensor([[0, 0, 0, 2, 2]]),
                                                    torch.tensor([[0, 0, 0, 2, 2]]), True, None))


@pytest.mark.parametrize("call,exc,match", [
    (lambda: jk.hf_mask(torch.tensor([[1, 0, 1]]), 3, 3), ValueError, "contiguous run"),
    (lambda: jk.hf_mask(torch.ones(2, 4), 3, 4), ValueError, "attention_mask"),
    (lambda: jk.hf_mask(torch.ones(2, 5, dtype=torch.long), 3, 4), ValueError, "kv_len=4"),
    (lambda: jk.hf_mask(None, 3, 4, sliding_window=0), ValueError, "sliding_window"),
    (lambda: jk.hf_mask(None, 3, 4, chunk_size=2.0), TypeError, "chunk_size"),
    (lambda: jk.hf_mask(None, 3, 4, causal=1), TypeError, "causal"),
    (lambda: jk.hf_mask(None, 3, 4, q_offset=torch.tensor([1, 2]), batch_size=3), None, None),
    (lambda: jk.hf_mask(torch.ones(2, 4, dtype=torch.long), 3, 4, q_offset=torch.tensor([1])),
     ValueError, "q_offset: expected 2"),
    (lambda: jk.document_mask(torch.tensor([[0, 1, 0]])), ValueError, "nondecreasing"),
    (lambda: jk.document_mask(torch.tensor([[0, -1, 1]])), ValueError, "between real tokens"),
    (lambda: jk.document_mask(torch.tensor([[0.0, 1.0]])), ValueError, "integer"),
    (lambda: jk.document_mask(torch.tensor([[0, 1]]), torch.tensor([[0, 1, 1]]), causal=True),
     ValueError, "Lq == Lk"),
    (lambda: jk.varlen_mask(torch.tensor([1, 3])), ValueError, "cumulative"),
    (lambda: jk.varlen_mask(torch.tensor([0, 3, 2])), ValueError, "cumulative"),
    (lambda: jk.varlen_mask(torch.tensor([0, 3]), torch.tensor([0, 4]), causal=True),
     ValueError, "cu_seqlens_k == cu_seqlens_q"),
])
def test_bad_factory_input(call, exc, match):
    if exc is None:        # batch_size is ignored when q_offset gives the batch
        assert call().batch_size == 2
        return
    with pytest.raises(exc, match=match):
        call()
