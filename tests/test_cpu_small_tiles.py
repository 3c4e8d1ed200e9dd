"""The CPU kernels' paths for small items (issue 16), at every ISA level (conftest.cpu_isa_level):

* two backward drivers: the small-tile one (attention_bwd_small.cpp: row-major tiles, inlined
  GEMMs; chosen when the keys fit one chunk, Lk <= 128) and the brgemm one (transposed tiles;
  longer keys and native bf16). The other suites run whichever the shape picks; here every
  table case and every score modifier also runs with the brgemm driver forced
  (JANUS_CPU_SMALL_TILES_MAX_KEYS=0), so both stay checked on the same cases;
* merged row blocks: a sample whose content rows and query rows fit one block is one block,
  with the padding rows between the streams skipped (computed as rows that see no key only by
  the native bf16 forward). Those rows must come out exactly zero (out, dq) with lse = -inf,
  even in recycled output memory.

Everything against the dense references with the project's tolerance rule (attention_utils)."""
import pytest
import torch

import janus_kernels as jk
from janus_kernels import _ext, masks

from attention_utils import assert_close_to_reference, make_qkv
from _attention_cases import CPU_SIZES, params
from test_attention import check_case
from test_cpu_score_mods import MODS, _inputs, run_cpu

pytestmark = [pytest.mark.skipif(not _ext.available(), reason="compiled extension missing"),
              pytest.mark.usefixtures("cpu_isa_level")]

SMALL_KEYS_ENV = "JANUS_CPU_SMALL_TILES_MAX_KEYS"


@pytest.fixture
def brgemm_backward(monkeypatch):
    """Every backward call takes the brgemm driver."""
    monkeypatch.setenv(SMALL_KEYS_ENV, "0")


@pytest.mark.usefixtures("brgemm_backward")
@pytest.mark.parametrize("case", params("cpu", CPU_SIZES))
def test_brgemm_driver_matches_reference(case):
    check_case(case, case.dtype, grad_gain=2.0)


@pytest.mark.parametrize("driver", ["small", "brgemm"])
@pytest.mark.parametrize("mods", list(MODS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_score_mods_and_dropout_on_both_drivers(monkeypatch, driver, mods, dtype):
    """softcap / rel_bias (and its gradient) with dropout and GQA, through each driver; fp16
    takes the widening path of either."""
    monkeypatch.setenv(SMALL_KEYS_ENV, "128" if driver == "small" else "0")
    _check_mods_with_dropout(masks.janus_nar_mask([5, 9, 2], [4, 6, 0]), mods, dtype, seed=11,
                             p=0.2)


def _check_mods_with_dropout(mask, mods, dtype, *, seed, p):
    """The CPU op's out, dq, dk, dv (and d_rel_bias) with the modifiers `mods` and dropout p,
    GQA (4 query heads on 2 kv heads), head dim 24, against the dense references."""
    softcap, rel = MODS[mods]
    q, k, v, do, bias = _inputs(mask, d=24, dtype=dtype, rel=rel)
    keep = jk.dropout.dropout_keep_mask(seed, mask.batch_size, q.shape[1], mask.q_len,
                                        mask.kv_len, p)
    ours = run_cpu(q, k, v, do, mask, softcap, bias, dropout_p=p, seed=seed)
    assert_close_to_reference(ours, q, k, v, do, mask.materialize(), keep=keep, dropout_p=p,
                              softcap=softcap, rel_bias=bias,
                              names=("out", "dq", "dk", "dv") + (("d_rel_bias",) if rel else ()))


def _iwslt_like_mask(B: int, seed: int = 0) -> masks.MaskDescriptor:
    """JANUS NAR masks of ragged IWSLT-like lengths: content rows [0, U + 2M), query rows
    [Lc, Lc + M); the shorter samples leave padding rows between their two streams."""
    g = torch.Generator().manual_seed(seed)
    N = torch.randint(6, 16, (B,), generator=g)
    M = (0.55 * N.double()).long()
    return masks.janus_nar_mask(N + 2 - M, M)


@pytest.mark.parametrize("driver", ["small", "brgemm"])
def test_merged_blocks_zero_the_rows_between_the_streams(monkeypatch, driver):
    """B x H large enough that the forward merges each sample's streams into one block (and
    the backward always does). The output memory is recycled from a call whose results were
    overwritten with NaN, so a row the kernels skip without writing shows up."""
    monkeypatch.setenv(SMALL_KEYS_ENV, "128" if driver == "small" else "0")
    # outputs of 2 MiB and more come from the output pool, and outputs of 1 MiB and more are
    # written with non-temporal stores (row_io.h): this case checks that path's values too
    B, H, d = 64, 8, 32
    mask = _iwslt_like_mask(B)
    q, k, v, do = make_qkv(mask, H=H, d=d)
    allowed = mask.materialize()
    rows_between = ~allowed.any(-1)   # padding rows (and rows that see no key)
    assert rows_between[:, :mask.q_split].any(), "the case must have padding rows between streams"

    def call():
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        out, lse = jk.attention(*leaves, mask, backend="cpu", return_lse=True)
        grads = torch.autograd.grad(out, leaves, do)
        return [out.detach(), lse.detach()] + list(grads)

    for t in call():   # poison the pool's blocks: the next call gets this memory back
        t.fill_(float("nan"))
    out, lse, dq, dk, dv = call()
    gap = rows_between[:, None, :].expand(B, H, -1)
    assert (out[gap] == 0).all() and (dq[gap] == 0).all()
    assert (lse[gap] == float("-inf")).all()
    assert not any(t.isnan().any() for t in (out, lse[~gap], dq, dk, dv))
    assert_close_to_reference([out, dq, dk, dv], q, k, v, do, allowed)


# ------------------------------------------------------ the forward's register softmax tile
@pytest.mark.parametrize("forward", ["tile", "general"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("family", ["janus_nar", "permutation"])
@pytest.mark.parametrize("n_max", [3, 9, 17, 26, 33, 45, 60])
def test_register_softmax_tile_matches_reference(monkeypatch, forward, dtype, family, n_max):
    """The forward's register tile (small_softmax_tile.h) takes every block whose keys fit
    3 AVX-512 / 6 AVX2 vectors, the JANUS NAR blocks' prefix and window merged into one chunk
    across the gap between them (merge_key_gap). Sample lengths up to n_max put the blocks'
    key spans on every vector count from 1 to past the tile (the general path then), with
    padding, a JANUS sample without masked tokens, GQA, and (permutation masks) rows inside a
    block that see no key at all; the same cases through the general softmax (the tile turned
    off) as the control."""
    monkeypatch.setenv(SMALL_KEYS_ENV, "128" if forward == "tile" else "0")
    g = torch.Generator().manual_seed(n_max)
    N = torch.randint(max(n_max // 2, 1), n_max + 1, (6,), generator=g)
    N[0], N[-1] = n_max, 1
    if family == "janus_nar":
        M = (0.55 * N.double()).long()
        M[1] = 0                               # a sample without masked tokens
        mask = masks.janus_nar_mask(N + 2 - M, M)
    else:   # the first query of each sample's order sees nothing
        rank = torch.arange(n_max).repeat(6, 1)
        for b in range(6):
            rank[b, :int(N[b])] = torch.randperm(int(N[b]), generator=g)
        mask = masks.permutation_mask(rank, N)
    q, k, v, do = make_qkv(mask, H=4, Hkv=2, d=24, dtype=dtype, seed=n_max)
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = jk.attention(*leaves, mask, backend="cpu")
    grads = torch.autograd.grad(out, leaves, do)
    assert_close_to_reference([out.detach()] + list(grads), q, k, v, do, mask.materialize())


# ------------------------------------------------------------------ the few-rows forward
ROWS_ENV = "JANUS_CPU_FWD_ROWS_MAX"


@pytest.fixture
def rows_forward(monkeypatch):
    """Every forward call takes the few-rows path (attention_fwd_rows.cpp), whatever Lq."""
    monkeypatch.setenv(ROWS_ENV, str(1 << 20))


@pytest.mark.usefixtures("rows_forward")
@pytest.mark.parametrize("case", params("cpu", CPU_SIZES))
def test_rows_forward_matches_reference(case):
    """out and lse of the few-rows forward on every CPU table case; the backward consumes its
    lse, so the gradients check it too."""
    check_case(case, case.dtype, grad_gain=2.0)


@pytest.mark.parametrize("path", ["rows", "tiled"])
@pytest.mark.parametrize("mods", list(MODS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_score_mods_and_dropout_on_both_forwards(monkeypatch, path, mods, dtype):
    """softcap / rel_bias with dropout and GQA through each forward (decoding-sized: 3 query
    rows, so the default picks the rows path), bf16 / fp16 widened."""
    monkeypatch.setenv(ROWS_ENV, "4" if path == "rows" else "0")
    # no sample with a single key: there dq is exactly 0 and every CPU path (tiled or rows,
    # either backward) leaves ~15 eps from delta = dO . O (scaled by 1 / (1 - p)), over the
    # rule's floor of 8 eps with softcap 2.5 and dropout; the table cases cover one-key rows
    mask = masks.causal_mask([3, 2, 1], 3, kv_lengths=[40, 17, 2], kv_len=40)
    _check_mods_with_dropout(mask, mods, dtype, seed=5, p=0.25)
