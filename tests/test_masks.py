"""The mask algebra: spec worked examples, closed form vs the authors' block construction,
tile classes vs materialize(), the C++ header vs the Python predicate, and bad input."""
import itertools

import pytest
import torch
from hypothesis import given, settings, strategies as st

import janus_kernels as jk
from janus_kernels import _ext, masks
from janus_kernels.masks import TileClass
from janus_kernels.reference import authors_janus_masks, authors_mask_to_allowed

from _mask_cases_hf import HF_CASES, docs_from_lengths, padding_mask, with_fields


def _grid(text: str) -> torch.Tensor:
    """Parse a spec matrix (rows of X / .) into a bool tensor, ignoring labels."""
    rows = []
    for line in text.strip().splitlines():
        cells = [c for c in line.split() if c in ("X", ".")]
        rows.append([c == "X" for c in cells])
    return torch.tensor(rows)


# spec §3.6 (a): U=3, M=3 without BOS/EOS
SPEC_A_CONTENT = """
   y1    X   X   X   X   X   X   .   .   .
   y4    X   X   X   X   X   X   .   .   .
   y6    X   X   X   X   X   X   .   .   .
   m2    X   X   X   X   X   X   .   .   .
   m3    X   X   X   X   X   X   .   .   .
   m5    X   X   X   X   X   X   .   .   .
  y2*    X   X   X   .   X   X   X   .   .
  y3*    X   X   X   .   .   X   X   X   .
  y5*    X   X   X   .   .   .   X   X   X
"""
SPEC_A_QUERY = """
   q2    X   X   X   X   X   X   .   .   .
   q3    X   X   X   .   X   X   X   .   .
   q5    X   X   X   .   .   X   X   X   .
"""
# spec §3.6 (b): U=5, M=3 with BOS/EOS
SPEC_B_CONTENT = """
    b    X   X   X   X   X   X   X   X   .   .   .
   y1    X   X   X   X   X   X   X   X   .   .   .
   y4    X   X   X   X   X   X   X   X   .   .   .
   y6    X   X   X   X   X   X   X   X   .   .   .
    e    X   X   X   X   X   X   X   X   .   .   .
   m2    X   X   X   X   X   X   X   X   .   .   .
   m3    X   X   X   X   X   X   X   X   .   .   .
   m5    X   X   X   X   X   X   X   X   .   .   .
  y2*    X   X   X   X   X   .   X   X   X   .   .
  y3*    X   X   X   X   X   .   .   X   X   X   .
  y5*    X   X   X   X   X   .   .   .   X   X   X
"""
SPEC_B_QUERY = """
   q2    X   X   X   X   X   X   X   X   .   .   .
   q3    X   X   X   X   X   .   X   X   X   .   .
   q5    X   X   X   X   X   .   .   X   X   X   .
"""
# spec §3.6 (c): U=4, M=1 padded to Lc=11, Lq=3 (real rows only; padding rows are ours)
SPEC_C_CONTENT = """
    b    X   X   X   X   X   .   .   .   .   .   .
   y1    X   X   X   X   X   .   .   .   .   .   .
   y3    X   X   X   X   X   .   .   .   .   .   .
    e    X   X   X   X   X   .   .   .   .   .   .
   m2    X   X   X   X   X   .   .   .   .   .   .
  y2*    X   X   X   X   .   X   .   .   .   .   .
"""
SPEC_C_QUERY = """
   q2    X   X   X   X   X   .   .   .   .   .   .
"""


@pytest.mark.parametrize("U,M,content,query", [
    (3, 3, SPEC_A_CONTENT, SPEC_A_QUERY),
    (5, 3, SPEC_B_CONTENT, SPEC_B_QUERY),
])
def test_spec_worked_matrices(U, M, content, query):
    d = jk.janus_nar_mask([U], [M])
    dense = d.materialize()[0]
    a = U + 2 * M
    assert torch.equal(dense[:a], _grid(content))
    assert torch.equal(dense[a:], _grid(query))


def test_spec_padding_example():
    # the short sample (U=4, M=1) next to the U=5, M=3 sample, padded to Lc=11, Lq=3
    d = jk.janus_nar_mask([5, 4], [3, 1], 11, 3)
    dense = d.materialize()[1]
    assert torch.equal(dense[:6], _grid(SPEC_C_CONTENT))
    assert torch.equal(dense[11:12], _grid(SPEC_C_QUERY))
    # our padding policy: padding rows see nothing (zeros), where the authors open them
    assert not dense[6:11].any() and not dense[12:].any()


def test_closed_form_equals_authors_block_form():
    """Every (U, M) with U + M <= 24 (U >= 2: BOS and EOS are never masked... but also any U),
    batched with random padding; real rows must match the authors' construction exactly."""
    g = torch.Generator().manual_seed(0)
    pairs = [(u, m) for u in range(0, 25) for m in range(0, 25 - u) if u + m >= 1]
    for start in range(0, len(pairs), 40):
        chunk = pairs[start:start + 40]
        U = torch.tensor([p[0] for p in chunk])
        M = torch.tensor([p[1] for p in chunk])
        Lc = int((U + 2 * M).max()) + int(torch.randint(0, 4, (1,), generator=g))
        Lq = int(M.max()) + int(torch.randint(0, 3, (1,), generator=g))
        ours = jk.janus_nar_mask(U, M, Lc, Lq).materialize()
        c, q = authors_janus_masks(U, M, Lc, Lq)
        theirs = authors_mask_to_allowed(c, q)
        real_rows = torch.cat([
            torch.arange(Lc)[None, :] < (U + 2 * M)[:, None],
            torch.arange(Lq)[None, :] < M[:, None]], 1)
        assert torch.equal(ours[real_rows], theirs[real_rows])
        # every real row sees exactly U + M keys; padding rows see none
        counts = ours.sum(-1)
        expect = torch.where(real_rows, (U + M)[:, None].expand_as(real_rows), 0)
        assert torch.equal(counts, expect)


def _check_tiles(d: masks.MaskDescriptor, bm: int, bn: int) -> None:
    """Tile classes against materialize(): exact, except that the documents kind may say
    PARTIAL where the exact class is SKIP or FULL (its classes come from corner documents)."""
    dense = d.materialize()
    tc = d.tile_class(bm, bn)
    B, nm, nn = tc.shape
    assert nm == -(-d.q_len // bm) and nn == -(-d.kv_len // bn)
    for tm, tn in itertools.product(range(nm), range(nn)):
        blk = dense[:, tm * bm:(tm + 1) * bm, tn * bn:(tn + 1) * bn]
        anyv = blk.flatten(1).any(1)
        allv = blk.flatten(1).all(1)
        expect = torch.where(allv, int(TileClass.FULL),
                             torch.where(anyv, int(TileClass.PARTIAL), int(TileClass.SKIP)))
        got = tc[:, tm, tn].long()
        ok = got == expect.long()
        if d.kind == masks.Kind.DOCUMENTS:
            ok |= got == int(TileClass.PARTIAL)
        assert bool(ok.all()), (d, bm, bn, tm, tn, got, expect)


def _random_descriptor(draw_family, B, rng):
    L = int(torch.randint(1, 40, (1,), generator=rng))
    lens = torch.randint(0, L + 1, (B,), generator=rng)
    if draw_family == "janus_nar":
        M = torch.randint(0, 12, (B,), generator=rng)
        U = torch.randint(0, 12, (B,), generator=rng)
        extra_c, extra_q = (int(x) for x in torch.randint(0, 5, (2,), generator=rng))
        return jk.janus_nar_mask(U, M, int((U + 2 * M).max()) + extra_c, int(M.max()) + extra_q)
    if draw_family == "janus_ar":
        return jk.janus_ar_mask(lens, L)
    if draw_family == "causal":
        return jk.causal_mask(lens, L)
    if draw_family == "causal_rect":
        kvl = torch.randint(0, L + 5, (B,), generator=rng)
        return jk.causal_mask(lens, L, kv_lengths=kvl, kv_len=L + 5)
    if draw_family == "sliding_window":
        return jk.sliding_window_mask(lens, int(torch.randint(1, 9, (1,), generator=rng)), L)
    if draw_family == "prefix_lm":
        pre = (lens.float() * torch.rand(B, generator=rng)).long()
        return jk.prefix_lm_mask(pre, lens, L)
    if draw_family == "key_padding":
        return jk.key_padding_mask(lens, q_len=int(torch.randint(1, 30, (1,), generator=rng)),
                                   kv_len=L)
    if draw_family == "full":
        return jk.full_mask(B, L, int(torch.randint(1, 30, (1,), generator=rng)))
    if draw_family == "permutation":
        rank = torch.stack([torch.randperm(L, generator=rng) for _ in range(B)])
        return jk.permutation_mask(rank, lens)
    return _random_issue14_descriptor(draw_family, B, L, lens, rng)


def _ints(rng, lo, hi, n=None):
    """Uniform ints in [lo, hi] (a list of n, or one int)."""
    t = torch.randint(lo, hi + 1, (n or 1,), generator=rng)
    return t.tolist() if n else int(t)


def _random_issue14_descriptor(draw_family, B, L, lens, rng):
    """KEY_START / DOCUMENTS families: HF semantics (padding runs, offsets, windows,
    chunks), packed documents, and hand-built tables with KEY_START (also on the prefix and
    permutation forms, which take the kernels' per-element paths)."""
    starts = [_ints(rng, 0, n) for n in lens.tolist()]
    if draw_family == "hf":
        q_len = [1, L, _ints(rng, 1, L)][_ints(rng, 0, 2)]
        am = padding_mask([(s, n) for s, n in zip(starts, lens.tolist())], L)
        offs = torch.tensor(_ints(rng, -2, L, B)) if _ints(rng, 0, 1) else None
        window = _ints(rng, 1, 9) if _ints(rng, 0, 1) else None
        chunk = _ints(rng, 1, 9) if _ints(rng, 0, 2) == 0 else None
        return jk.hf_mask(am, q_len, L, causal=bool(_ints(rng, 0, 3)), sliding_window=window,
                          chunk_size=chunk, q_offset=offs)
    if draw_family == "documents":
        lengths = []
        for b in range(B):
            left, cur = L - starts[b], []
            while left > 0 and _ints(rng, 0, 4):
                cur.append(_ints(rng, 1, left))
                left -= cur[-1]
            lengths.append(cur)
        causal = bool(_ints(rng, 0, 1))
        return jk.document_mask(docs_from_lengths(lengths, L, starts), causal=causal,
                                sliding_window=_ints(rng, 1, 9) if _ints(rng, 0, 2) == 0 else None)
    if draw_family == "key_start":       # prefix-LM / sliding window with left padding
        base = jk.prefix_lm_mask((lens.float() * torch.rand(B, generator=rng)).long(), lens, L) \
            if _ints(rng, 0, 1) else jk.sliding_window_mask(lens, _ints(rng, 1, 9), L)
        return with_fields(base, KEY_START=starts)
    if draw_family == "permutation_key_start":
        rank = torch.stack([torch.randperm(L, generator=rng) for _ in range(B)])
        return with_fields(jk.permutation_mask(rank, lens), KEY_START=starts)
    raise AssertionError(draw_family)


FAMILIES = ["janus_nar", "janus_ar", "causal", "causal_rect", "sliding_window", "prefix_lm",
            "key_padding", "full", "permutation", "hf", "documents", "key_start",
            "permutation_key_start"]


@pytest.mark.parametrize("name", sorted(HF_CASES))
def test_issue14_cases_tile_class(name):
    d = HF_CASES[name]()
    for bm, bn in ((1, 1), (3, 5), (16, 16), (64, 64)):
        _check_tiles(d, bm, bn)


@settings(max_examples=60, deadline=None)
@given(family=st.sampled_from(FAMILIES), B=st.integers(1, 4), seed=st.integers(0, 2 ** 31),
       bm=st.sampled_from([1, 3, 4, 8, 16, 64]), bn=st.sampled_from([1, 2, 5, 8, 16, 64]))
def test_tile_class_matches_materialize(family, B, seed, bm, bn):
    d = _random_descriptor(family, B, torch.Generator().manual_seed(seed))
    _check_tiles(d, bm, bn)


@pytest.mark.skipif(not _ext.available(), reason="compiled extension missing")
@settings(max_examples=60, deadline=None)
@given(family=st.sampled_from(FAMILIES), B=st.integers(1, 4), seed=st.integers(0, 2 ** 31),
       bm=st.sampled_from([1, 3, 8, 16]), bn=st.sampled_from([1, 5, 8, 16]))
def test_cpp_header_matches_python(family, B, seed, bm, bn):
    """csrc/include/janus/mask.h (used by the C++/CUDA kernels) == masks.py."""
    d = _random_descriptor(family, B, torch.Generator().manual_seed(seed))
    dense = torch.ops.janus.mask_materialize(d.params, d.rank, d.q_split, int(d.kind),
                                             d.q_len, d.kv_len)
    assert torch.equal(dense, d.materialize())
    tc = torch.ops.janus.mask_tile_class(d.params, d.q_split, d.q_len, d.kv_len, bm, bn,
                                         d.rank, int(d.kind))
    if d.kind != masks.Kind.PERMUTATION:   # window and documents: the same classes
        assert torch.equal(tc, d.tile_class(bm, bn))
    else:   # the C++ permutation class is SKIP / PARTIAL from lengths: never wrong
        py = d.tile_class(bm, bn)
        assert bool(((tc == py) | (tc == TileClass.PARTIAL)).all())


def test_family_semantics_small():
    # causal with padding
    d = jk.causal_mask([3, 1], 3)
    m = d.materialize()
    assert torch.equal(m[0], torch.tril(torch.ones(3, 3, dtype=torch.bool)))
    assert m[1, 0, 0] and m[1].sum() == 1
    # sliding window of 2
    m = jk.sliding_window_mask([4], 2).materialize()[0]
    assert m.sum(-1).tolist() == [1, 2, 2, 2] and not m[3, 1]
    # prefix-LM
    m = jk.prefix_lm_mask([2], [4]).materialize()[0]
    assert m[0, 1] and not m[0, 2] and m[2, 2] and not m[2, 3]
    # key padding keeps every row (nn.MultiheadAttention semantics)
    m = jk.key_padding_mask([2], q_len=3, kv_len=4).materialize()[0]
    assert m[:, :2].all() and not m[:, 2:].any()
    # JANUS AR: content and query streams identical and causal
    m = jk.janus_ar_mask([3, 2], 3).materialize()
    assert torch.equal(m[0, :3], m[0, 3:]) and torch.equal(m[0, :3], torch.tril(torch.ones(3, 3, dtype=torch.bool)))
    assert not m[1, 2].any() and not m[1, 5].any()
    # permutation: content rank[j] <= rank[i], query strict
    rank = torch.tensor([[2, 0, 1]])
    m = jk.permutation_mask(rank).materialize()[0]
    assert m[0].tolist() == [True, True, True] and m[1].tolist() == [False, True, False]
    assert m[3].tolist() == [False, True, True] and not m[4].any()


def test_m_zero_and_empty_batch():
    m = jk.janus_nar_mask([4, 3], [0, 0]).materialize()
    assert m.shape == (2, 4, 4) and m[0].all() and m[1, :3, :3].all() and not m[1, 3].any()
    e = jk.janus_nar_mask(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    assert e.materialize().shape == (0, 0, 0) and e.tile_class(4, 4).shape == (0, 0, 0)


@pytest.mark.parametrize("call,match", [
    (lambda: jk.janus_nar_mask([3], [2], 6, 2), r"U \+ 2M.*exceed content_len"),
    (lambda: jk.janus_nar_mask([3], [3], 9, 2), r"masked \(M\).*exceed query_len"),
    (lambda: jk.janus_nar_mask([3], [-1]), r"masked \(M\).*>= 0"),
    (lambda: jk.janus_nar_mask([3, 4], [1]), r"masked \(M\).*expected 2"),
    (lambda: jk.janus_nar_mask([3.0], [1]), r"unmasked \(U\).*integer"),
    (lambda: jk.janus_nar_mask([[3]], [[1]]), r"1-D"),
    (lambda: jk.causal_mask([5], 4), r"lengths.*exceed seq_len"),
    (lambda: jk.prefix_lm_mask([5], [4]), r"prefix_lengths"),
    (lambda: jk.sliding_window_mask([4], 0), r"window"),
    (lambda: jk.permutation_mask(torch.rand(2, 3)), r"rank"),
    (lambda: masks.MaskDescriptor(torch.zeros(2, 3, dtype=torch.int32), 4, 4, 4), r"params"),
    (lambda: masks.MaskDescriptor(torch.zeros(2, 10), 4, 4, 4), r"int32"),
    (lambda: jk.causal_mask([3], 3).tile_class(0, 4), r"block sizes"),
])
def test_bad_descriptors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_check_against_inputs():
    d = jk.causal_mask([3, 2], 3)
    with pytest.raises(ValueError, match="batch size"):
        d.check(3, 3, 3, torch.device("cpu"))
    with pytest.raises(ValueError, match="q_len=3"):
        d.check(2, 4, 3, torch.device("cpu"))
