"""Packing the live rows (``ExecOptions.pack``, janus_model/packing.py) changes the work, not
the math.

The packed pass (row-wise work on the live rows only, attention through scattered padded
buffers) must give the padded pass's losses and every parameter gradient, to float rounding,
in every mode, pruned or not, with fused and dense attention, post- and pre-LN. The check is
shown to catch a broken plan (a live key row left out, rows put in the wrong places), and the
row counts show that the padding rows are really skipped."""
import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import janus_kernels as jk
import janus_model.packing as packing_mod
from janus_kernels.mask_fields import Field
from janus_kernels.masks import MaskDescriptor
from janus_model.layout import PAD
from janus_model.model import ExecOptions
from janus_model.objectives import compute_loss

from test_prune import MODES, TOL, _batch, _model
from test_prune import _worst_difference as _worst


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    yield


def _worst_difference(model, src, batch, mode, base: ExecOptions) -> float:
    """Largest difference between the packed and the padded run (test_prune's measure)."""
    return _worst(model, src, batch, mode, base, switch="pack")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("attention", ["fused", "dense"])
@pytest.mark.parametrize("pre_ln", [False, True], ids=["post_ln", "pre_ln"])
@pytest.mark.parametrize("prune", [True, False], ids=["pruned", "unpruned"])
def test_packed_losses_and_gradients_equal_padded(mode, dtype, attention, pre_ln, prune):
    model = _model(dtype, pre_ln)
    src, batch = _batch(3)
    opts = ExecOptions(attention=attention, loss="eager", prune=prune)
    assert _worst_difference(model, src, batch, mode, opts) <= TOL[dtype]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("decoder_layers", [0, 1, 3])
def test_packed_equals_padded_for_other_depths_and_the_fused_losses(mode, decoder_layers):
    model = _model(torch.float64, decoder_layers=decoder_layers)
    src, batch = _batch(11, B=9)
    for loss in ("fused", "fused_linear"):
        opts = ExecOptions(loss=loss)
        assert _worst_difference(model, src, batch, mode, opts) <= TOL[torch.float64]


def test_packing_is_on_by_default_and_off_for_the_authors():
    assert ExecOptions().pack is True and ExecOptions.authors().pack is False
    with pytest.raises(ValueError, match="pack"):
        ExecOptions(pack=1)


def _rows_reaching(modules, run) -> list:
    """The row count of each call of ``modules`` (in call order) while ``run()`` runs."""
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
             for m in modules]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in hooks:
            h.remove()
    return seen


def test_only_the_live_rows_reach_the_row_wise_layers():
    """Every FFN of the packed JANUS forward sees exactly the live rows: the rows the
    descriptors do not call padding (AR: 2 T_b per sample; NAR: U + 2M - 1 content rows and
    M queries; the pruned last layer: the T_b AR queries, the M-block rows and M queries)."""
    model = _model(torch.float32, decoder_layers=2)
    src, batch = _batch(3)
    seen = _rows_reaching([layer.ffn for layer in model.decoder],
                          lambda: model(src, batch, "janus"))
    ar, nar = batch.ar, batch.nar
    T_b, U, M = ar.lengths, nar.U, nar.M
    ar_live, ar_out = int(2 * T_b.sum()), int(T_b.sum())
    nar_live = int((U + 2 * M - (M > 0).long() + M).sum())
    assert seen == [ar_live, ar_out, nar_live, int(2 * M.sum())]
    padded = batch.ar.decoder_rows().num_rows * len(T_b)
    assert ar_live < padded


def _plan_shifted(mask, n_content, last=None):
    """Broken plan: each sample's keys placed one row later."""
    plan = _plan(mask, n_content, last)
    return dataclasses.replace(plan, kv_flat=(plan.kv_flat + 1).clamp(
        max=plan.B * n_content - 1))


_plan = packing_mod.plan_packed_pass


def test_the_equality_check_catches_a_broken_packing(monkeypatch):
    """The check above is not vacuous: keys in the wrong rows fail it by a wide margin."""
    monkeypatch.setattr(packing_mod, "plan_packed_pass", _plan_shifted)
    model = _model(torch.float64)
    src, batch = _batch(5)
    assert _worst_difference(model, src, batch, "janus", ExecOptions(loss="eager")) > 1e-3


def test_content_rows_that_are_keys_but_padding_rows_stay_live(monkeypatch):
    """A descriptor whose content rows past q_lengths are still keys (key_padding_mask with
    q_lengths < kv_lengths): those rows are live (their keys are read); without the keys
    the plan would leave them out."""
    mask = jk.key_padding_mask(torch.tensor([5, 3]), 6, 6, q_lengths=torch.tensor([2, 3]))
    plan = packing_mod.plan_packed_pass(mask, 6)
    assert plan.live_flat.tolist() == [0, 1, 2, 3, 4, 6, 7, 8]
    assert plan.kv_flat.tolist() == plan.live_flat.tolist()
    assert plan.body.enc_rows.tolist() == [5, 3] and plan.body.enc_len == 5
    assert plan.body.enc_flat.tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
    monkeypatch.setattr(MaskDescriptor, "valid_keys", lambda self: torch.zeros(
        self.batch_size, self.kv_len, dtype=torch.bool))
    assert packing_mod.plan_packed_pass(mask, 6).live_flat.tolist() == [0, 1, 6, 7, 8]


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.integers(0, 9), st.integers(0, 6), st.data())
def test_valid_rows_and_keys_match_the_materialized_mask(B, Lc, Lq, data):
    """valid_rows / valid_keys (the packing's source) agree with the dense predicate: a row
    that is not valid sees nothing, a key that is not valid is seen by nobody, and a valid
    row that sees nothing or a valid key nobody sees only occurs where the predicate says."""
    U = torch.tensor(data.draw(st.lists(st.integers(0, Lc), min_size=B, max_size=B)))
    M = torch.tensor([data.draw(st.integers(0, min(Lq, (Lc - u) // 2))) for u in U.tolist()])
    for mask in (jk.janus_nar_mask(U, M, Lc, Lq),
                 jk.key_padding_mask(U, Lc + Lq, Lc, q_lengths=U),
                 jk.causal_mask(U, Lc)):
        dense = mask.materialize()
        rows, keys = mask.valid_rows(), mask.valid_keys()
        assert rows.shape == dense.shape[:2] and keys.shape == (B, dense.shape[2])
        assert not dense[~rows].any()
        assert not (dense & ~keys[:, None, :]).any()
        p = mask.params.long()
        r = torch.arange(mask.q_len)
        want = torch.where(r < mask.q_split, r[None] < p[:, Field.ROWS0, None],
                           (r - mask.q_split)[None] < p[:, Field.ROWS1, None])
        assert torch.equal(rows, want)


def test_a_planned_batch_runs_packed_under_torch_compile():
    """Inside torch.compile a live-row count would be data-dependent: an unplanned batch runs
    the padded rows; after JanusBatch.plan_packing() the compiled graph scatters packed rows
    (index_copy) and gives the eager packed loss and gradients."""
    torch._dynamo.reset()
    model = _model(torch.float32)
    src, batch = _batch(3)
    graphs = []

    def capture(gm, inputs):
        graphs.append(gm.code)
        return gm.forward

    def step(b):
        model.zero_grad()
        loss = compute_loss(model, src, b, "janus", opts=ExecOptions())[0]
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    compiled = torch.compile(lambda s, b: compute_loss(model, s, b, "janus",
                                                       opts=ExecOptions())[0],
                             fullgraph=True, backend=capture)
    compiled(src, batch)
    assert not any("index_copy" in g for g in graphs)      # unplanned: padded rows
    torch._dynamo.reset()
    graphs.clear()
    src2, planned = _batch(3)
    planned.plan_packing()
    model.zero_grad()
    loss = compiled(src2, planned)
    assert any("index_copy" in g for g in graphs)
    loss.backward()
    got = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    want_loss, want = step(planned)
    torch.testing.assert_close(loss.detach(), want_loss, rtol=1e-5, atol=1e-6)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_the_packed_encoder_computes_the_padded_encoders_real_rows():
    """encode on the real source rows gives the padded encoder's real rows (padding rows:
    zeros), and the decoder's encoder-attention keys and values match on the real keys."""
    model = _model(torch.float64, pre_ln=True).eval()
    src, _ = _batch(7, B=5)
    lengths = (src != PAD).sum(1)
    real = torch.arange(src.shape[1])[None, :] < lengths[:, None]          # (B, S)
    assert not real.all()                                                    # padding present
    with torch.no_grad():
        packed, padded = (model.encode(src, ExecOptions(pack=p)) for p in (True, False))
        assert packed.rows is not None and padded.rows is None
        assert packed.rows.shape[0] == int(lengths.sum())
        torch.testing.assert_close(packed.out[real], padded.out[real], rtol=1e-12, atol=1e-12)
        assert (packed.out[~real] == 0).all()
        for (kp, vp), (kd, vd) in zip(model.encoder_kv(packed), model.encoder_kv(padded)):
            keys = real[:, None, :].expand(-1, kp.shape[1], -1)
            torch.testing.assert_close(kp[keys], kd[keys], rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(vp[keys], vd[keys], rtol=1e-12, atol=1e-12)


def test_only_the_real_source_rows_reach_the_encoder_and_its_key_projections():
    model = _model(torch.float32, decoder_layers=2)
    src, batch = _batch(3)
    n_real = int((src != PAD).sum())
    assert n_real < src.numel()
    mods = [layer.ffn for layer in model.encoder] + \
        [layer.enc_attn.k_proj for layer in model.decoder]
    assert _rows_reaching(mods, lambda: model(src, batch, "cmlm")) == [n_real] * len(mods)


def _source_rows_shifted(lengths, S):
    """Broken plan: every sample's real rows taken one position later."""
    sr = packing_mod.source_rows(lengths, S)
    return dataclasses.replace(sr, flat=(sr.flat + 1).clamp(max=len(lengths) * S - 1))


def test_the_equality_check_catches_a_broken_encoder_packing(monkeypatch):
    import janus_model.model as model_mod
    monkeypatch.setattr(model_mod, "source_rows", _source_rows_shifted)
    model = _model(torch.float64)
    src, batch = _batch(5)
    for mode in ("cmlm", "janus"):
        assert _worst_difference(model, src, batch, mode, ExecOptions(loss="eager")) > 1e-3


def test_a_batch_planned_with_its_source_runs_the_encoder_packed_under_torch_compile():
    """plan_packing(src=...) plans the encoder too: the compiled graph then packs the source
    (more index_copy than a batch planned without it), gives the eager loss and gradients,
    and a call with another source trips the graph's runtime assertion."""
    model = _model(torch.float32)
    graphs = []

    def capture(gm, inputs):
        graphs.append(gm.code)
        return gm.forward

    compiled = torch.compile(lambda s, b: compute_loss(model, s, b, "cmlm",
                                                       opts=ExecOptions())[0],
                             fullgraph=True, backend=capture)
    counts = []
    for with_src in (False, True):
        torch._dynamo.reset()
        graphs.clear()
        src, batch = _batch(3)
        batch.plan_packing(src=src if with_src else None)
        model.zero_grad()
        loss = compiled(src, batch)
        counts.append(sum(g.count("index_copy") for g in graphs))
    assert counts[1] > counts[0] > 0
    loss.backward()
    got = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    want_loss = compute_loss(model, src, batch, "cmlm", opts=ExecOptions())[0]
    want_loss.backward()
    want = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    torch.testing.assert_close(loss.detach(), want_loss.detach(), rtol=1e-5, atol=1e-6)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    other = src.clone()
    b0 = int((other[0] != PAD).sum())
    other[0, b0 - 1] = PAD                       # sample 0 one token shorter
    with pytest.raises(RuntimeError, match="planned for"):
        compiled(other, batch)
    with pytest.raises(ValueError, match="planned for"):
        compute_loss(model, other, batch, "cmlm", opts=ExecOptions())
    wider = torch.cat([src, torch.full_like(src[:, :1], PAD)], 1)   # same lengths, S + 1
    with pytest.raises(ValueError, match="planned for a"):
        compute_loss(model, wider, batch, "cmlm", opts=ExecOptions())
    torch._dynamo.reset()


def test_plan_packing_rejects_a_source_of_another_batch_size():
    src, batch = _batch(3)
    with pytest.raises(ValueError, match="src"):
        batch.plan_packing(src=src[:-1])
    with pytest.raises(ValueError, match="src"):
        batch.plan_packing(src=src[0])
