"""Trainer: bitwise-exact resume after an interruption, DDP (2 gloo processes), checkpoint
averaging, the inverse-sqrt schedule, the time budget, bf16 autocast."""
import dataclasses
import math
import os
import signal

import pytest
import torch
import torch.multiprocessing as mp

from janus_model.train import (InverseSqrtSchedule, TrainConfig, Trainer, average_checkpoints,
                               last_checkpoints)

DATA = os.path.join(os.path.dirname(__file__), "..", "janus_model", "data", "ddtp_small")


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    yield


def write_corpus(d, n_train=48, n_valid=8):
    """A small real corpus: the shortest pairs of the bundled DDTP cut."""
    os.makedirs(d, exist_ok=True)
    for split, n in (("train", n_train), ("valid", n_valid)):
        src = open(os.path.join(DATA, f"{split}.de"), encoding="utf-8").read().splitlines()
        tgt = open(os.path.join(DATA, f"{split}.en"), encoding="utf-8").read().splitlines()
        pairs = sorted(zip(src, tgt), key=lambda p: len(p[0]) + len(p[1]))[:n]
        for lang, k in (("de", 0), ("en", 1)):
            with open(os.path.join(d, f"{split}.{lang}"), "w", encoding="utf-8") as f:
                f.write("".join(p[k] + "\n" for p in pairs))
    return d


def tiny_cfg(data, out, **kw):
    base = dict(data=data, out=out, vocab_size=120, dim=32, heads=4, ffn_dim=64,
                encoder_layers=1, decoder_layers=1, dropout=0.1, attention_dropout=0.1,
                max_positions=64, lr=2e-3, warmup_updates=4, max_tokens=96, log_every=0,
                valid_every=0, save_every=0, valid_bleu_sentences=4, progress=False,
                threads=1, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def _quiet(_msg):
    pass


def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_bitwise(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"


def _opt_tensors(opt):
    out = []
    for st in opt.state_dict()["state"].values():
        out += [st[k] for k in sorted(st)]
    return out


def test_inverse_sqrt_schedule():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    s = InverseSqrtSchedule(opt, lr=1e-3, warmup=100, init_lr=1e-7)
    assert s.lr_at(0) == 1e-7
    assert math.isclose(s.lr_at(50), 1e-7 + 0.5 * (1e-3 - 1e-7))
    assert math.isclose(s.lr_at(100), 1e-3)
    assert math.isclose(s.lr_at(400), 0.5e-3)
    s.num_updates = 400
    assert math.isclose(s.apply(), 0.5e-3) and math.isclose(opt.param_groups[0]["lr"], 0.5e-3)


def test_resume_after_interruption_is_bitwise_exact(tmp_path, monkeypatch):
    """Uninterrupted: 7 updates. Interrupted: SIGINT during update 3 (training stops at the
    boundary and writes checkpoint_last), then a NEW trainer resumes to 7. Dropout, attention
    dropout, span masking, gradient accumulation, epoch boundaries (an epoch is ~4 updates)
    and a validation in between all run; parameters and Adam moments must match bitwise."""
    data = write_corpus(str(tmp_path / "data"))
    kw = dict(update_freq=2, max_updates=7, valid_every=3)
    a = Trainer(tiny_cfg(data, str(tmp_path / "a"), **kw), resume=False, log=_quiet)
    assert len(a._epoch_batches(0)) < 2 * 7          # the run crosses epoch boundaries
    a.train()

    b = Trainer(tiny_cfg(data, str(tmp_path / "b"), **kw), resume=False, log=_quiet)
    step = b.train_step

    def interrupted_step():
        rec = step()
        if b.update == 3:
            os.kill(os.getpid(), signal.SIGINT)       # handled: stop at the next boundary
        return rec
    monkeypatch.setattr(b, "train_step", interrupted_step)
    summary = b.train()
    assert summary["reason"] == "interrupted" and b.update == 3
    del b
    c = Trainer(tiny_cfg(data, str(tmp_path / "b"), **kw), resume=True, log=_quiet)
    assert c.update == 3
    c.train()
    assert c.update == 7
    _assert_bitwise(_params(a.model), _params(c.model))
    for x, y in zip(_opt_tensors(a.optimizer), _opt_tensors(c.optimizer)):
        assert torch.equal(x, y)
    assert (a.epoch, a.batch_in_epoch) == (c.epoch, c.batch_in_epoch)

    # the check has teeth: resuming without the saved RNG streams diverges
    d = Trainer(tiny_cfg(data, str(tmp_path / "b"), **kw),
                resume=str(tmp_path / "b" / "checkpoint_3.pt"), log=_quiet)
    assert d.update == 3
    d.mask_gen.manual_seed(12345)
    d.train()
    assert any(not torch.equal(x, y) for x, y in
               zip(_params(a.model).values(), _params(d.model).values()))


def test_checkpoint_averaging_math(tmp_path):
    g = torch.Generator().manual_seed(0)
    paths, sds = [], []
    for i in range(3):
        sd = {"w": torch.randn(4, 5, generator=g), "h": torch.randn(3, generator=g).half(),
              "n": torch.tensor([7, 8])}
        ck = {"model": sd, "model_config": {"i": i}, "optimizer": {}, "rng": [], "spm": b"x"}
        paths.append(str(tmp_path / f"checkpoint_{10 * (i + 1)}.pt"))
        torch.save(ck, paths[-1])
        sds.append(sd)
    avg = average_checkpoints(paths)
    want_w = (sds[0]["w"].double() + sds[1]["w"].double() + sds[2]["w"].double()) / 3
    assert torch.equal(avg["model"]["w"], want_w.float())
    want_h = sum(s["h"].double() for s in sds) / 3
    assert avg["model"]["h"].dtype == torch.float16
    assert torch.equal(avg["model"]["h"], want_h.half())
    assert torch.equal(avg["model"]["n"], torch.tensor([7, 8]))
    assert avg["model_config"] == {"i": 2} and "optimizer" not in avg and "rng" not in avg
    assert last_checkpoints(str(tmp_path), 2) == paths[1:]
    # errors: differing keys, differing integer buffers, too few checkpoints
    torch.save({"model": {"w": torch.zeros(4, 5)}}, str(tmp_path / "bad.pt"))
    with pytest.raises(ValueError, match="different parameters"):
        average_checkpoints(paths[:1] + [str(tmp_path / "bad.pt")])
    sd = dict(sds[0], n=torch.tensor([7, 9]))
    torch.save({"model": sd}, str(tmp_path / "bad2.pt"))
    with pytest.raises(ValueError, match="non-float tensor n"):
        average_checkpoints(paths[:1] + [str(tmp_path / "bad2.pt")])
    with pytest.raises(ValueError, match="asked for 5"):
        last_checkpoints(str(tmp_path), 5)


def test_averaged_model_loads_and_checkpoints_rotate(tmp_path):
    data = write_corpus(str(tmp_path / "data"))
    t = Trainer(tiny_cfg(data, str(tmp_path / "r"), max_updates=4, save_every=1, keep_last=2,
                         valid_bleu_sentences=0), resume=False, log=_quiet)
    t.train()
    names = sorted(os.listdir(tmp_path / "r"))
    assert "checkpoint_3.pt" in names and "checkpoint_4.pt" in names
    assert "checkpoint_2.pt" not in names and "checkpoint_last.pt" in names
    avg = average_checkpoints(last_checkpoints(str(tmp_path / "r"), 2))
    from janus_model.generate import load_model
    torch.save(avg, str(tmp_path / "avg.pt"))
    model, vocab, _ = load_model(str(tmp_path / "avg.pt"))
    assert len(vocab) == model.cfg.vocab_size
    with pytest.raises(ValueError, match="not a full trainer checkpoint"):
        Trainer(tiny_cfg(data, str(tmp_path / "r")), resume=str(tmp_path / "avg.pt"),
                log=_quiet)


def test_time_budget_and_bf16(tmp_path):
    data = write_corpus(str(tmp_path / "data"))
    t = Trainer(tiny_cfg(data, str(tmp_path / "r"), max_minutes=1e-4, bf16=True, clip_norm=0.5,
                         valid_bleu_sentences=2), resume=False, log=_quiet)
    s = t.train()
    assert s["reason"] == "time budget" and t.update >= 1
    assert math.isfinite(s["valid_loss"]) and "bleu_ar" in s and "bleu_nar" in s
    with pytest.raises(ValueError, match="max_updates, max_epochs or max_minutes"):
        Trainer(tiny_cfg(data, str(tmp_path / "r2")), resume=False, log=_quiet).train()
    with pytest.raises(ValueError, match="mode"):
        tiny_cfg(data, str(tmp_path), mode="nat")


# ------------------------------------------------------------------------------------ DDP
def _ddp_worker(rank, world, store, data, out, result_dir):
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        t = Trainer(tiny_cfg(data, out, max_updates=2, valid_bleu_sentences=0), resume=False,
                    log=_quiet)
        init = _params(t.model)
        losses = [t.train_step()["loss"] for _ in range(2)]
        t.save()                                    # collective (gathers every rank's RNG)
        torch.save({"init": init, "final": _params(t.model), "losses": losses,
                    "first_batch": t._epoch_batches(0)[0]},
                   os.path.join(result_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_gloo(tmp_path):
    data = write_corpus(str(tmp_path / "data"))
    res = tmp_path / "res"
    res.mkdir()
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "store"), data, str(tmp_path / "out"),
                                str(res)), nprocs=2, join=True)
    r0, r1 = (torch.load(str(res / f"rank{r}.pt")) for r in range(2))
    _assert_bitwise(r0["init"], r1["init"])          # same initial weights
    _assert_bitwise(r0["final"], r1["final"])        # gradients averaged identically
    assert any(not torch.equal(r0["init"][k], r0["final"][k]) for k in r0["init"])
    assert r0["first_batch"] != r1["first_batch"]    # each rank trains on its own shard
    ck = torch.load(str(tmp_path / "out" / "checkpoint_last.pt"), weights_only=False)
    assert ck["world_size"] == 2 and len(ck["rng"]) == 2 and ck["update"] == 2
    assert not torch.equal(ck["rng"][0]["torch"], ck["rng"][1]["torch"])


def test_exec_options_dataclass_roundtrip(tmp_path):
    """The checkpoint's configs are plain dicts (loadable without pickled classes)."""
    data = write_corpus(str(tmp_path / "data"))
    t = Trainer(tiny_cfg(data, str(tmp_path / "r"), max_updates=1, valid_bleu_sentences=0),
                resume=False, log=_quiet)
    t.train()
    ck = torch.load(str(tmp_path / "r" / "checkpoint_last.pt"), weights_only=False)
    assert ck["model_config"] == dataclasses.asdict(t.model.cfg)
    assert isinstance(ck["spm"], bytes) and ck["update"] == 1


def test_gradient_accumulation_averages_micro_batches(tmp_path):
    """update_freq=2: the gradient the optimiser sees is the mean of the two micro-batch
    gradients (same masks), and the update consumes two batches."""
    data = write_corpus(str(tmp_path / "data"))
    t = Trainer(tiny_cfg(data, str(tmp_path / "r"), update_freq=2, dropout=0.0,
                         attention_dropout=0.0), resume=False, log=_quiet)
    mask_state = t.mask_gen.get_state()
    b0, b1 = t._epoch_batches(0)[:2]
    p0 = _params(t.model)
    seen = {}
    step = t.optimizer.step

    def capture(*a, **k):
        seen.update({n: p.grad.clone() for n, p in t.model.named_parameters()})
        return step(*a, **k)
    t.optimizer.step = capture
    t.train_step()
    assert t.batch_in_epoch == 2 and t.update == 1
    t.model.load_state_dict(p0)
    t.mask_gen.set_state(mask_state)
    grads = []
    for idx in (b0, b1):
        t.model.zero_grad(set_to_none=True)
        t._forward_backward(idx, 1.0)
        grads.append({n: p.grad.clone() for n, p in t.model.named_parameters()})
    for n, g in seen.items():
        want = (grads[0][n] + grads[1][n]) / 2
        assert torch.allclose(g, want, rtol=1e-5, atol=1e-8), n
    assert any(not torch.allclose(grads[0][n], grads[1][n]) for n in seen)


def test_resume_with_changed_batching_restarts_the_epoch(tmp_path):
    data = write_corpus(str(tmp_path / "data"))
    out = str(tmp_path / "r")
    Trainer(tiny_cfg(data, out, max_updates=2, valid_bleu_sentences=0), resume=False,
            log=_quiet).train()
    msgs = []
    t = Trainer(tiny_cfg(data, out, max_tokens=128, max_updates=3), resume=True,
                log=msgs.append)
    assert t.update == 2 and (t.epoch, t.batch_in_epoch) == (1, 0)
    assert any("not an exact resume" in m for m in msgs)


@pytest.mark.parametrize("mode,terms,bleus", [("cmlm", {"nar", "length"}, {"bleu_nar"}),
                                              ("ar", {"ar"}, {"bleu_ar"})])
def test_baseline_modes(tmp_path, mode, terms, bleus):
    data = write_corpus(str(tmp_path / "data"))
    t = Trainer(tiny_cfg(data, str(tmp_path / "r"), mode=mode, max_updates=1,
                         valid_bleu_sentences=2), resume=False, log=_quiet)
    rec = t.train_step()
    assert set(rec) - {"loss", "lr", "gnorm", "ntok"} == terms
    res = t.validate()
    assert {k for k in res if k.startswith("bleu")} == bleus
    assert {k[6:] for k in res if k.startswith("valid_")} == terms | {"loss"}


def test_fused_and_eager_loss_paths_agree(tmp_path):
    """cfg.loss picks compute_loss's terms: the fused janus_kernels ops (default) or plain
    torch; one update from the same state gives the same loss and nearly the same weights."""
    data = write_corpus(str(tmp_path / "data"))
    runs = {}
    for loss in ("fused_linear", "fused", "eager"):
        t = Trainer(tiny_cfg(data, str(tmp_path / loss), loss=loss, dropout=0.0,
                             attention_dropout=0.0), resume=False, log=_quiet)
        assert t.model.exec.loss == loss
        rec = t.train_step()
        runs[loss] = (rec, _params(t.model))
    re_, pe = runs["eager"]
    for fused in ("fused_linear", "fused"):
        rf, pf = runs[fused]
        for k in ("loss", "ar", "nar", "aux", "kl_ar_aux", "length"):
            assert math.isclose(rf[k], re_[k], rel_tol=1e-5, abs_tol=1e-7), (fused, k)
        for k in pf:
            assert torch.allclose(pf[k], pe[k], rtol=1e-4, atol=1e-6), (fused, k)
    with pytest.raises(ValueError, match="loss"):
        tiny_cfg(data, str(tmp_path), loss="fast")
