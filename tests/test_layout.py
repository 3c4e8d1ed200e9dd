"""JANUS input construction (janus_model.layout) vs the spec's worked example (§1.2) and a
slow per-sample reference written straight from spec §1.1 / §1.2."""
import pytest
import torch

from janus_model.layout import BOS, EOS, PAD, UNK, build_batch


def _batch(rows, masked_sets):
    """rows: lists of real tokens y1..yN; masked_sets: sets of masked indices (1..N)."""
    W = max(len(r) for r in rows) + 2
    tgt = torch.full((len(rows), W), PAD)
    msk = torch.zeros(len(rows), W, dtype=torch.bool)
    for b, (r, s) in enumerate(zip(rows, masked_sets)):
        tgt[b, :len(r) + 2] = torch.tensor([BOS] + list(r) + [EOS])
        for k in s:
            msk[b, k] = True
    return tgt, msk


def test_spec_worked_example():
    # N=6, masked {2,3,5}; tokens y_k = 10 + k
    y = [10 + k for k in range(1, 7)]
    tgt, msk = _batch([y], [{2, 3, 5}])
    b = build_batch(tgt, msk)
    n = b.nar
    y1, y2, y3, y4, y5, y6 = y
    assert n.content[0].tolist() == [BOS, y1, y4, y6, EOS, UNK, UNK, UNK, y2, y3, y5]
    assert n.content_index[0].tolist() == [0, 1, 4, 6, 7, 2, 3, 5, 2, 3, 5]
    assert n.content_positions[0].tolist() == [2, 3, 6, 8, 9, 4, 5, 7, 4, 5, 7]
    assert n.content_real[0].tolist() == [True] * 5 + [False] * 3 + [True] * 3
    assert n.query[0].tolist() == [UNK] * 3
    assert n.query_index[0].tolist() == [2, 3, 5]
    assert n.query_positions[0].tolist() == [4, 5, 7]
    assert n.target[0].tolist() == [y2, y3, y5]
    assert (n.U.tolist(), n.M.tolist()) == ([5], [3])
    assert n.mblock()[0].tolist() == [False] * 5 + [True] * 3 + [False] * 3
    assert n.nar_col.tolist() == [5, 6, 7] and n.aux_col.tolist() == [0, 1, 2]
    assert n.row_target.tolist() == [y2, y3, y5]
    a = b.ar
    assert a.content[0].tolist() == [BOS] + y
    assert a.query[0].tolist() == [UNK] * 7
    assert a.positions[0].tolist() == list(range(2, 9))
    assert a.target[0].tolist() == y + [EOS]
    # AR rows used for KL: 1 (->y2), 2 (->y3), 4 (->y5)
    assert n.ar_col.tolist() == [1, 2, 4]
    assert a.target[0, n.ar_col].tolist() == [y2, y3, y5]
    assert b.target_lengths.tolist() == [8]
    # the fused descriptors are the spec's masks
    d = n.mask()
    assert (d.q_len, d.kv_len, d.q_split) == (14, 11, 11)
    assert a.mask().q_len == 14


def _slow_reference(tgt, msk):
    """Per-sample, straight from spec §1: lists, then padded with PAD / index 1 / pos 1."""
    out = []
    for b in range(tgt.shape[0]):
        items = [t for t in tgt[b].tolist() if t != PAD]
        L = len(items)
        S = [k for k in range(L) if msk[b, k]]
        V = [k for k in range(L) if k not in S]
        out.append(dict(
            content=[items[k] for k in V] + [UNK] * len(S) + [items[k] for k in S],
            index=V + S + S,
            real=[True] * len(V) + [False] * len(S) + [True] * len(S),
            query_index=S, target=[items[k] for k in S], U=len(V), M=len(S),
            ar_content=items[:-1], ar_target=items[1:], ar_rows=[k - 1 for k in S]))
    return out


def _pad(x, n, v):
    return x + [v] * (n - len(x))


def _random_batch(g, B, max_n):
    N = torch.randint(0, max_n + 1, (B,), generator=g).tolist()
    rows = [torch.randint(4, 50, (n,), generator=g).tolist() for n in N]
    sets = [{k for k in range(1, n + 1) if torch.rand((), generator=g) < 0.5} for n in N]
    return _batch(rows, sets)


@pytest.mark.parametrize("seed", range(6))
def test_matches_slow_reference(seed):
    g = torch.Generator().manual_seed(seed)
    tgt, msk = _random_batch(g, B=7, max_n=12)
    ref = _slow_reference(tgt, msk)
    b = build_batch(tgt, msk)
    n, a = b.nar, b.ar
    Lc = max(r["U"] + 2 * r["M"] for r in ref)
    Lq = max(r["M"] for r in ref)
    T = max(len(r["ar_content"]) for r in ref)
    assert (n.content_len, n.query_len, a.seq_len) == (Lc, Lq, T)
    assert n.cmlm_len == max(r["U"] + r["M"] for r in ref)
    rows_s, rows_t, nar_cols, aux_cols, ar_cols = [], [], [], [], []
    ar_s, ar_c, ar_t = [], [], []
    for i, r in enumerate(ref):
        assert n.content[i].tolist() == _pad(r["content"], Lc, PAD)
        assert n.content_index[i].tolist() == _pad(r["index"], Lc, 1)
        assert n.content_positions[i].tolist() == _pad([k + 2 for k in r["index"]], Lc, 1)
        assert n.content_real[i].tolist() == _pad(r["real"], Lc, False)
        assert n.query[i].tolist() == _pad([UNK] * r["M"], Lq, PAD)
        assert n.query_index[i].tolist() == _pad(r["query_index"], Lq, 1)
        assert n.query_positions[i].tolist() == _pad([k + 2 for k in r["query_index"]], Lq, 1)
        assert n.target[i].tolist() == _pad(r["target"], Lq, PAD)
        assert (int(n.U[i]), int(n.M[i])) == (r["U"], r["M"])
        T_b = len(r["ar_content"])
        assert a.content[i].tolist() == _pad(r["ar_content"], T, PAD)
        assert a.query[i].tolist() == _pad([UNK] * T_b, T, PAD)
        assert a.positions[i].tolist() == _pad(list(range(2, T_b + 2)), T, 1)
        assert a.target[i].tolist() == _pad(r["ar_target"], T, PAD)
        assert int(a.lengths[i]) == T_b
        rows_s += [i] * r["M"]
        rows_t += r["target"]
        nar_cols += [r["U"] + j for j in range(r["M"])]
        aux_cols += list(range(r["M"]))
        ar_cols += r["ar_rows"]
        ar_s += [i] * T_b
        ar_c += list(range(T_b))
        ar_t += r["ar_target"]
    assert n.row_sample.tolist() == rows_s and n.row_target.tolist() == rows_t
    assert n.nar_col.tolist() == nar_cols and n.aux_col.tolist() == aux_cols
    assert n.ar_col.tolist() == ar_cols
    assert a.row_sample.tolist() == ar_s and a.row_col.tolist() == ar_c
    assert a.row_target.tolist() == ar_t
    # the KL rows of the AR pass predict exactly the NAR/AUX targets
    assert a.target[n.row_sample, n.ar_col].tolist() == rows_t
    # flat maps address the right rows of padded (B*stride) tensors
    assert n.content.flatten()[n.row_sample * Lc + n.nar_col].eq(UNK).all()
    assert a.target.flatten()[a.rows()].tolist() == ar_t


def test_no_masked_tokens_and_minimal_rows():
    tgt, msk = _batch([[], [7, 8]], [set(), set()])
    b = build_batch(tgt, msk)
    assert b.nar.query_len == 0 and b.nar.num_masked == 0
    assert b.nar.query.shape == (2, 0)
    assert b.nar.content.tolist() == [[BOS, EOS, PAD, PAD], [BOS, 7, 8, EOS]]
    assert b.ar.content.tolist() == [[BOS, PAD, PAD], [BOS, 7, 8]]
    assert b.ar.target.tolist() == [[EOS, PAD, PAD], [7, 8, EOS]]
    d = b.nar.mask()
    assert d.materialize().shape == (2, 4, 4)


def test_bad_inputs():
    tgt, msk = _batch([[5, 6]], [{1}])
    with pytest.raises(ValueError, match="masked"):
        build_batch(tgt, msk.long())
    bad = msk.clone()
    bad[0, 0] = True
    with pytest.raises(ValueError, match="masked"):
        build_batch(tgt, bad)
    bad = msk.clone()
    bad[0, 3] = True                      # EOS
    with pytest.raises(ValueError, match="masked"):
        build_batch(tgt, bad)
    t2 = tgt.clone()
    t2[0, 0] = 5
    with pytest.raises(ValueError, match="target"):
        build_batch(t2, msk)
    t3 = torch.tensor([[BOS, PAD, 5, EOS]])
    with pytest.raises(ValueError, match="target"):
        build_batch(t3, torch.zeros_like(t3, dtype=torch.bool))
    # inputs are not modified
    t0, m0 = tgt.clone(), msk.clone()
    build_batch(tgt, msk)
    assert torch.equal(t0, tgt) and torch.equal(m0, msk)
