"""The role of each decoder row (janus_model.layout.DecoderRows): output rows, the losses'
reads, the output rows' masks, and the dead G row -- each checked against the spec's row
definitions (§1.1, §1.2, §3.2) and against dependency closure over the dense masks."""
import pytest
import torch

from janus_model.layout import build_batch

from test_layout import _batch, _random_batch, _slow_reference


def _passes(batch):
    """(name, DecoderRows, per-sample count of real output rows in each half)."""
    n, a = batch.nar, batch.ar
    return [("ar", a.decoder_rows(), [a.lengths]),
            ("nar", n.decoder_rows(drop_dead=True), [n.M, n.M]),
            ("nar_full", n.decoder_rows(drop_dead=False), [n.M, n.M]),
            ("cmlm", n.cmlm_rows(), [n.M])]


def _real_out(rows, counts):
    """(B, R_out) bool: the output rows that are not padding."""
    half = rows.num_out // len(counts)
    r = torch.arange(half)[None, :]
    return torch.cat([r < c[:, None] for c in counts], 1)


@pytest.mark.parametrize("seed", range(5))
def test_reads_are_the_spec_rows(seed):
    """Each loss reads the rows spec §1 names: AR = every real AR query row; NAR = the M-block
    content row U + r; AUX = query row r."""
    g = torch.Generator().manual_seed(seed)
    tgt, msk = _random_batch(g, B=7, max_n=12)
    ref = _slow_reference(tgt, msk)
    b = build_batch(tgt, msk)
    nar_rows = [r["U"] + j for r in ref for j in range(r["M"])]
    aux_rows = [j for r in ref for j in range(r["M"])]
    ar_rows = [j for r in ref for j in range(len(r["ar_content"]))]
    for name, rows, _ in _passes(b):
        flat = rows.out_rows.reshape(-1)
        if name == "ar":
            assert (flat[rows.reads["ar"]] - rows.n_content).tolist() == ar_rows
        else:
            assert flat[rows.reads["nar"]].tolist() == nar_rows, name
            # the rows read as NAR hold MASK tokens at the masked positions, in order
            assert rows.positions.reshape(-1)[
                b.nar.row_sample * rows.num_rows + flat[rows.reads["nar"]]].tolist() == \
                (b.nar.query_positions.reshape(-1)[
                    b.nar.row_sample * b.nar.query_len + b.nar.aux_col]).tolist()
        if name.startswith("nar"):
            assert (flat[rows.reads["aux"]] - rows.n_content).tolist() == aux_rows
        assert rows.reads.keys() == ({"ar"} if name == "ar" else
                                     {"nar"} if name == "cmlm" else {"nar", "aux"})


@pytest.mark.parametrize("seed", range(5))
def test_out_mask_is_the_mask_of_the_output_rows(seed):
    """A real output row sees exactly what its row sees in the full mask; a padding output
    row sees nothing."""
    g = torch.Generator().manual_seed(seed)
    b = build_batch(*_random_batch(g, B=7, max_n=12))
    for name, rows, counts in _passes(b):
        full = rows.mask.materialize()
        out = rows.out_mask.materialize()
        assert out.shape == (full.shape[0], rows.num_out, rows.n_content), name
        picked = full.gather(1, rows.out_rows[..., None].expand(-1, -1, rows.n_content))
        real = _real_out(rows, counts)
        assert torch.equal(out & real[..., None], picked & real[..., None]), name
        assert not out[~real].any(), name


def _needed(allowed, out_rows, real_out):
    """(B, R) bool: rows some real output row depends on through any number of layers (a row
    depends on itself via the residual and on every key it attends to)."""
    B, R, Lk = allowed.shape
    need = torch.zeros(B, R + 1, dtype=torch.bool)              # column R: dump
    need = need.scatter_(1, torch.where(real_out, out_rows, R), True)[:, :R]
    while True:
        keys = (allowed & need[..., None]).any(1)                      # (B, Lk)
        new = need.clone()
        new[:, :Lk] |= keys
        if torch.equal(new, need):
            return need
        need = new


@pytest.mark.parametrize("seed", range(5))
def test_only_the_last_g_row_is_dead(seed):
    """Over the unpruned NAR rows, the rows the outputs depend on are every real row except
    the last G row of each sample with M > 0 (and, for M = 0, the whole sample: nothing of it
    is read): leaving the G row out is exact, and within a sample with masked tokens nothing
    else can be left out of the earlier layers."""
    g = torch.Generator().manual_seed(seed)
    b = build_batch(*_random_batch(g, B=7, max_n=12))
    n = b.nar
    rows = n.decoder_rows(drop_dead=False)
    need = _needed(rows.mask.materialize(), rows.out_rows, _real_out(rows, [n.M, n.M]))
    Lc, Lq = rows.n_content, n.query_len
    for i in range(n.U.shape[0]):
        U, M = int(n.U[i]), int(n.M[i])
        expect = [True] * (U + 2 * M) + [False] * (Lc - U - 2 * M) \
            + [True] * M + [False] * (Lq - M)
        if M:
            expect[U + 2 * M - 1] = False                          # G_{M-1}
        else:
            expect = [False] * (Lc + Lq)
        assert need[i].tolist() == expect, (U, M)


def test_pruned_nar_rows_on_the_spec_example():
    """N=6, masked {2,3,5} (U=5, M=3): content V|M|G without G(y5), 10 rows; output rows
    are the M block (5, 6, 7) and the 3 queries; the live mask is the full one cut."""
    y = [10 + k for k in range(1, 7)]
    tgt, msk = _batch([y], [{2, 3, 5}])
    b = build_batch(tgt, msk)
    full, live = b.nar.decoder_rows(drop_dead=False), b.nar.decoder_rows()
    assert (b.nar.live_len, live.n_content, full.n_content) == (10, 10, 11)
    assert live.tokens[0].tolist() == full.tokens[0, :10].tolist() + full.tokens[0, 11:].tolist()
    assert live.out_rows[0].tolist() == [5, 6, 7, 10, 11, 12]
    m_full, m_live = full.mask.materialize()[0], live.mask.materialize()[0]
    keep = list(range(10)) + [11, 12, 13]
    assert torch.equal(m_live, m_full[keep][:, :10])
    assert not m_full[keep][:, 10].any()                            # nobody kept sees G(y5)


def test_no_masked_tokens():
    b = build_batch(*_batch([[], [7, 8]], [set(), set()]))
    for name, rows, _ in _passes(b):
        if name != "ar":
            assert rows.num_out == 0 and all(r.numel() == 0 for r in rows.reads.values())
    assert b.nar.live_len == b.nar.content_len == 4
