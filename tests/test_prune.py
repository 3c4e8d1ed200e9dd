"""Pruning the rows nobody reads (``ExecOptions.prune``) changes the work, not the math.

The pruned model (last decoder layer on the output rows only; the NAR pass without the dead
last G row) must give the unpruned model's losses and every parameter gradient, to float
rounding, in every mode, with fused and dense attention, post- and pre-LN, and for the
authors' dense design. The comparison is shown to catch a broken pruning (a needed row
dropped, a wrong row read)."""
import dataclasses

import pytest
import torch

import janus_kernels as jk
import janus_model.layers as layers_mod
import janus_model.layout as layout_mod
from janus_model.layers import fused_core
from janus_model.layout import BOS, UNK, build_batch
from janus_model.masking import span_mask
from janus_model.model import ExecOptions, JanusConfig, JanusTransformer
from janus_model.objectives import compute_loss

from test_model import V, _pad_rows

MODES = ("ar", "cmlm", "janus")
TOL = {torch.float32: 5e-6, torch.float64: 1e-12}


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    yield


def _model(dtype, pre_ln=False, decoder_layers=2):
    """init_std 0.25: peaked attention, so a row that sees a wrong key shows."""
    cfg = JanusConfig(vocab_size=V, dim=32, heads=4, ffn_dim=64, encoder_layers=1,
                      decoder_layers=decoder_layers, dropout=0.0, pre_ln=pre_ln,
                      max_positions=64, init_std=0.25)
    torch.manual_seed(0)
    return JanusTransformer(cfg).to(dtype)


def _batch(seed, B=6, max_n=12):
    """Random lengths (N = 0 included, so M = 0 samples occur) and span masks."""
    g = torch.Generator().manual_seed(seed)
    tn = torch.randint(0, max_n + 1, (B,), generator=g).tolist()
    sn = torch.randint(1, 9, (B,), generator=g).tolist()
    tgt = _pad_rows([torch.randint(4, V, (n,), generator=g).tolist() for n in tn])
    src = _pad_rows([torch.randint(4, V, (n,), generator=g).tolist() for n in sn])
    return src, build_batch(tgt, span_mask(tgt, generator=g))


def _loss_and_grads(model, src, batch, mode, opts):
    model.zero_grad()
    loss, terms = compute_loss(model, src, batch, mode, opts=opts)
    (1.7 * loss).backward()                       # upstream grad != 1
    grads = {n: torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
             for n, p in model.named_parameters()}
    return {k: v.detach() for k, v in terms.items()}, grads


def _worst_difference(model, src, batch, mode, base: ExecOptions, switch: str = "prune"
                      ) -> float:
    """Largest difference between the runs with ExecOptions.<switch> on and off (pruned /
    unpruned by default): each loss term relative to max(1, |term|), each gradient entry
    relative to the largest gradient entry."""
    t0, g0 = _loss_and_grads(model, src, batch, mode, dataclasses.replace(base, **{switch: False}))
    t1, g1 = _loss_and_grads(model, src, batch, mode, dataclasses.replace(base, **{switch: True}))
    assert set(t0) == set(t1)
    worst = max((abs(t1[k].item() - t0[k].item()) / max(1.0, abs(t0[k].item())) for k in t0),
                default=0.0)
    gmax = max(g.abs().max().item() for g in g0.values())
    assert gmax > 0
    return max(worst, max((g1[k] - g0[k]).abs().max().item() / gmax for k in g0))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("attention", ["fused", "dense"])
@pytest.mark.parametrize("pre_ln", [False, True], ids=["post_ln", "pre_ln"])
def test_pruned_losses_and_gradients_equal_unpruned(mode, dtype, attention, pre_ln):
    model = _model(dtype, pre_ln)
    opts = ExecOptions(attention=attention, loss="eager")
    for seed in range(3):
        src, batch = _batch(seed)
        assert _worst_difference(model, src, batch, mode, opts) <= TOL[dtype], seed


@pytest.mark.parametrize("mode", MODES)
def test_pruned_equals_unpruned_in_the_authors_design_and_with_fused_losses(mode):
    """The authors' design (2 encoder passes, dense masks, every row projected) and the
    default fused execution (fused loss ops), each with and without pruning."""
    model = _model(torch.float32)
    src, batch = _batch(7)
    for base in (ExecOptions.authors(), ExecOptions()):
        assert _worst_difference(model, src, batch, mode, base) <= TOL[torch.float32], base


@pytest.mark.parametrize("decoder_layers", [1, 3])
def test_pruned_equals_unpruned_for_other_depths(decoder_layers):
    """One layer: the pruned layer reads the embeddings directly; three: the dead G row is
    left out of two full layers as well."""
    model = _model(torch.float64, decoder_layers=decoder_layers)
    src, batch = _batch(11)
    assert _worst_difference(model, src, batch, "janus", ExecOptions()) <= 1e-12


@pytest.mark.parametrize("backend", [
    None, "reference", pytest.param("triton", marks=pytest.mark.slow)])  # triton: interpreted
def test_pruned_equals_unpruned_on_each_attention_backend(backend):
    """The pruned passes' descriptors (output rows, no dead G row) on every CPU kernel
    (None: the default one, the compiled kernel when built)."""
    model = _model(torch.float32)
    # interpreted Triton is slow: a smaller batch, janus mode only (it runs the AR and the
    # NAR/AUX pruned descriptors; CMLM's is a plain key-padding mask)
    src, batch = _batch(2, B=3, max_n=8) if backend == "triton" else _batch(2)
    for mode in (("janus",) if backend == "triton" else MODES):
        opts = ExecOptions(backend=backend, loss="eager")
        assert _worst_difference(model, src, batch, mode, opts) <= TOL[torch.float32], mode


def test_incremental_decoding_can_compute_the_query_row_only():
    """AR decoding reads only the query row of each step; its content row's keys/values come
    from the layer inputs (cached), so ``decode_rows(last=...)`` may skip its last-layer row."""
    model = _model(torch.float64).eval()
    src = _pad_rows([[5, 6, 7], [8, 9]])
    enc = model.encode(src)
    kv = model.encoder_kv(enc)
    full_caches = [{} for _ in model.decoder]
    pruned_caches = [{} for _ in model.decoder]
    query_row = torch.ones(2, 1, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    tok = torch.full((2,), BOS)
    with torch.no_grad():
        for t in range(5):
            rows = torch.stack([tok, torch.full_like(tok, UNK)], 1)
            pos = torch.full_like(rows, t + 2)
            core = fused_core(jk.full_mask(2, 2, t + 1))
            h = model.decode_rows(rows, pos, 1, core, enc, kv, caches=full_caches)[:, 1]
            last = (query_row, fused_core(jk.full_mask(2, 1, t + 1)))
            hp = model.decode_rows(rows, pos, 1, core, enc, kv, caches=pruned_caches,
                                   last=last)[:, 0]
            assert (h - hp).abs().max().item() <= 1e-12 * h.abs().max().item(), t
            tok = torch.randint(4, V, (2,), generator=g)


def test_pruning_is_on_by_default_and_off_for_the_authors():
    assert ExecOptions().prune is True and ExecOptions.authors().prune is False
    with pytest.raises(ValueError, match="prune"):
        ExecOptions(prune="yes")


def test_the_pruned_rows_are_really_skipped():
    """The last layer gets only the output rows; the NAR pass's content is shorter by the
    dead G row of the longest sample."""
    model = _model(torch.float32)
    src, batch = _batch(3)
    seen = []
    layer = model.decoder[-1]
    hook = layer.ffn.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
    try:
        with torch.no_grad():   # padded rows (pack=False): the shapes show the pruning
            padded = dataclasses.replace(model.exec, pack=False)
            model(src, batch, "janus", padded)
            model(src, batch, "janus", dataclasses.replace(padded, prune=False))
    finally:
        hook.remove()
    nar, T = batch.nar, batch.ar.seq_len
    assert seen == [T, 2 * nar.query_len, 2 * T, nar.content_len + nar.query_len]
    assert nar.decoder_rows().n_content == nar.live_len < nar.content_len


def _drop_one_more_row(U, M):
    """Broken pruning: leave out the needed G_{M-2} (or, for M = 1, the M row) as well."""
    return U + 2 * M - 2 * (M > 0).long()


_gather = layers_mod.gather_rows


def _gather_the_next_rows(x, rows):
    """Broken pruning: the pruned last layer picks the row after each output row."""
    return _gather(x, (rows + 1).clamp(max=x.shape[1] - 1))


@pytest.mark.parametrize("attention", ["fused", "dense"])
@pytest.mark.parametrize("breakage", ["drop_needed_row", "last_layer_wrong_rows"])
def test_the_equality_check_catches_a_broken_pruning(monkeypatch, breakage, attention):
    """The check above is not vacuous: with a wrong pruning it fails by a wide margin.
    (Which rows the losses read is the same map for both runs; test_layout checks it
    against the spec.)"""
    if breakage == "drop_needed_row":
        monkeypatch.setattr(layout_mod, "_live_content", _drop_one_more_row)
    else:
        monkeypatch.setattr(layers_mod, "gather_rows", _gather_the_next_rows)
    model = _model(torch.float64)
    src, batch = _batch(5)                       # built with the broken layout
    assert int(batch.nar.M.max()) >= 2
    opts = ExecOptions(attention=attention, loss="eager", pack=False)
    assert _worst_difference(model, src, batch, "janus", opts) > 1e-3
    if breakage == "drop_needed_row":   # packed, the plan sees an output row made padding
        with pytest.raises(ValueError, match="out_mask calls real"):
            _worst_difference(model, src, batch, "janus", dataclasses.replace(opts, pack=True))


@pytest.mark.parametrize("attention", ["fused", "dense"])
def test_pruned_with_no_masked_token_in_the_batch(attention):
    """M = 0 everywhere: the NAR/CMLM passes have no output rows at all."""
    model = _model(torch.float64)
    src = _pad_rows([[5, 6], [7, 8, 9]])
    tgt = _pad_rows([[], [12, 13]])
    batch = build_batch(tgt, torch.zeros_like(tgt, dtype=torch.bool))
    assert batch.nar.decoder_rows().num_out == 0
    for mode in MODES:
        opts = ExecOptions(attention=attention, loss="eager")
        assert _worst_difference(model, src, batch, mode, opts) <= 1e-12, mode


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("weights", [None, "paper"])
def test_fused_linear_loss_equals_eager(mode, weights):
    """``loss="fused_linear"`` (the projection inside the fused losses, states instead of
    logits) gives the eager losses and every parameter gradient, pruned and not, with the
    released and the paper's weights (the weights reach the fused op's gradients)."""
    from janus_model.objectives import LossWeights
    model = _model(torch.float64)
    src, batch = _batch(5)
    w = LossWeights.paper() if weights == "paper" else None
    for prune in (True, False):
        runs = []
        for loss in ("eager", "fused_linear"):
            model.zero_grad()
            total, terms = compute_loss(model, src, batch, mode, weights=w,
                                        opts=ExecOptions(loss=loss, prune=prune))
            (1.3 * total).backward()
            runs.append((total.detach(), {k: v.detach() for k, v in terms.items()},
                         {n: p.grad.clone() for n, p in model.named_parameters()
                          if p.grad is not None}))
        (t0, terms0, g0), (t1, terms1, g1) = runs
        # the eager losses take float32 softmaxes (spec 6.1), the fused ones float64 here
        torch.testing.assert_close(t1.double(), t0.double(), rtol=1e-6, atol=1e-7)
        assert set(terms1) == set(terms0)
        for k in terms0:
            torch.testing.assert_close(terms1[k].double(), terms0[k].double(), rtol=1e-6,
                                       atol=1e-7)
        assert set(g1) == set(g0)
        gmax = max(g.abs().max() for g in g0.values())
        for n in g0:
            assert (g1[n] - g0[n]).abs().max() <= 1e-6 * gmax, n


def test_fused_linear_loss_rejects_terms_fn_and_project_all():
    model = _model(torch.float32)
    src, batch = _batch(1)
    with pytest.raises(ValueError, match="fused_linear"):
        compute_loss(model, src, batch, "janus", opts=ExecOptions(loss="fused_linear"),
                     terms_fn=lambda out, eps: {})
    with pytest.raises(ValueError, match="project"):
        ExecOptions(loss="fused_linear", project="all")
