"""Loss-weight presets and per-term overrides (the paper's Table 6 ablations from the command
line): the presets agree with janus_kernels' JanusLossWeights, the flags reach the loss (a
zero weight removes its term from the logged total), and bad settings are refused."""
import json
import math
import os

import pytest
import torch

from janus_kernels.losses import JanusLossWeights
from janus_model import cli
from janus_model.objectives import LossWeights
from janus_model.train import LOSS_TERMS, MODE_TERMS, TrainConfig, Trainer

from test_train import _quiet, tiny_cfg, write_corpus


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    yield


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_corpus(str(tmp_path_factory.mktemp("data")))


@pytest.mark.parametrize("preset", ["released", "paper"])
def test_presets_match_janus_kernels_weights(preset):
    want = JanusLossWeights() if preset == "released" else JanusLossWeights.paper()
    got = TrainConfig(data="d", out="o", weights=preset).loss_weights()
    for term, field in LOSS_TERMS.items():
        assert getattr(got, field) == getattr(want, term), term
    assert set(LOSS_TERMS) <= set(JanusLossWeights.__dataclass_fields__)


def test_flags_parse_to_weights():
    args = cli.build_train_parser().parse_args(
        ["--data", "d", "--out", "o", "--weights", "paper", "--w-kl-ar-aux", "0",
         "--w-length", "0.25"])
    w = cli.config_from_args(args).loss_weights()
    assert w == LossWeights(ar=1, nar=1, aux=1, kl_ar_nar=0, kl_ar_aux=0, kl_nar_aux=2,
                            length=0.25, label_smoothing=0.1)
    cmlm = TrainConfig(data="d", out="o", mode="cmlm", weights="paper").loss_weights()
    assert (cmlm.nar, cmlm.length) == (1.0, 0.1)          # cmlm_loss whatever the preset


def _weighted_sum(rec, weights):
    return sum(getattr(weights, LOSS_TERMS[t]) * rec[LOSS_TERMS[t]] for t in LOSS_TERMS
               if LOSS_TERMS[t] in rec)


def test_zero_weight_removes_the_term_from_the_logged_loss(data, tmp_path):
    """Through janus-train: the logged loss is the weighted sum of the logged terms with the
    weights the flags chose; with --w-kl-ar-aux 0 the (nonzero) AR-AUX KL is not in it."""
    out = str(tmp_path / "r")
    assert cli.train_main(
        ["--data", data, "--out", out, "--arch", "tiny", "--dim", "32", "--ffn-dim", "64",
         "--encoder-layers", "1", "--decoder-layers", "1", "--vocab-size", "120",
         "--max-tokens", "96", "--max-updates", "2", "--log-every", "1",
         "--valid-bleu-sentences", "0", "--no-progress", "--threads", "1", "--device", "cpu",
         "--w-kl-ar-aux", "0", "--w-nar-ce", "2"]) == 0
    with open(os.path.join(out, "log.jsonl")) as f:
        recs = [json.loads(line) for line in f]
    w = LossWeights(kl_ar_aux=0.0, nar=2.0)
    train = [r for r in recs if "loss" in r]
    assert len(train) == 2
    for r in train:
        assert r["kl_ar_aux"] > 1e-6                       # computed and logged, not used
        assert math.isclose(r["loss"], _weighted_sum(r, w), rel_tol=1e-5)
        assert not math.isclose(r["loss"], _weighted_sum(r, LossWeights()), rel_tol=1e-3)
    valid = recs[-1]
    assert math.isclose(valid["valid_loss"], sum(
        getattr(w, LOSS_TERMS[t]) * valid[f"valid_{LOSS_TERMS[t]}"] for t in LOSS_TERMS),
        rel_tol=1e-5)
    ck = torch.load(os.path.join(out, "checkpoint_last.pt"), weights_only=False)
    assert ck["train_config"]["w_kl_ar_aux"] == 0.0 and ck["train_config"]["weights"] == \
        "released"


def test_trainer_uses_the_paper_preset(data, tmp_path):
    t = Trainer(tiny_cfg(data, str(tmp_path), weights="paper", w_kl_nar_aux=0.5),
                resume=False, log=_quiet)
    assert t.weights == LossWeights(ar=1, nar=1, aux=1, kl_ar_nar=0, kl_ar_aux=2,
                                    kl_nar_aux=0.5)
    rec = t.train_step()
    assert math.isclose(rec["loss"], _weighted_sum(rec, t.weights), rel_tol=1e-5)


@pytest.mark.parametrize("kw,match", [
    (dict(w_kl_ar_aux=-1.0), "w_kl_ar_aux"), (dict(w_ar_ce=float("inf")), "w_ar_ce"),
    (dict(mode="cmlm", w_kl_ar_aux=0.0), "mode 'cmlm' has no kl_ar_aux"),
    (dict(mode="ar", w_length=1.0), "mode 'ar' has no length"),
    (dict(mode="ar", w_ar_ce=0.0), "every term of mode 'ar' has weight 0"),
    (dict(**{f"w_{t}": 0.0 for t in MODE_TERMS["janus"]}), "nothing would be trained")])
def test_bad_weights_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(data="d", out="o", **kw)


def test_bad_weight_flag_exits_2(capsys):
    assert cli.train_main(["--data", "d", "--out", "o", "--w-aux-ce", "-1",
                           "--max-updates", "1"]) == 2
    err = capsys.readouterr().err
    assert "w_aux_ce" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        cli.build_train_parser().parse_args(["--data", "d", "--out", "o", "--w-ar-ce", "x"])
