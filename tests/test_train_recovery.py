"""Trainer robustness: the best checkpoint across resumes, log.jsonl after a resume, files a
kill leaves behind (temporaries, a 0-byte / truncated checkpoint_last), and the checks of
TrainConfig. Tiny models, a few updates each."""
import contextlib
import json
import os
import subprocess
import sys

import pytest
import torch

from janus_model.checkpoints import atomic_save, remove_stale_temporaries, truncate_log
from janus_model.train import TrainConfig, Trainer

from test_train import _assert_bitwise, _params, _quiet, tiny_cfg, write_corpus


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    yield


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_corpus(str(tmp_path_factory.mktemp("data")))


def _log(out):
    with open(os.path.join(out, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def _ck(out, name):
    return torch.load(os.path.join(out, name), weights_only=False)


def test_best_checkpoint_survives_a_resume(data, tmp_path):
    """The issue's repro, scaled down: periodic saves, validation only at the end, then a
    longer rerun. checkpoint_last must carry the final validation's loss (it held inf, so the
    rerun's first validation replaced checkpoint_best.pt by a worse model)."""
    out = str(tmp_path / "r")
    kw = dict(save_every=2, valid_every=0, valid_bleu_sentences=0)
    Trainer(tiny_cfg(data, out, max_updates=4, **kw), resume=False, log=_quiet).train()
    first = [r["valid_loss"] for r in _log(out) if "valid_loss" in r]
    assert len(first) == 1
    assert _ck(out, "checkpoint_last.pt")["best_valid_loss"] == first[0]
    assert _ck(out, "checkpoint_4.pt")["best_valid_loss"] == first[0]
    Trainer(tiny_cfg(data, out, max_updates=5, **kw), resume=True, log=_quiet).train()
    valid = [(r["valid_loss"], r["update"]) for r in _log(out) if "valid_loss" in r]
    assert [u for _, u in valid] == [4, 5]
    best = _ck(out, "checkpoint_best.pt")
    assert (best["best_valid_loss"], best["update"]) == min(valid)


def test_log_keeps_only_the_resumed_history(data, tmp_path):
    """Resuming from update 2 of a run that logged up to 5 drops records 3..5 (and a line cut
    short by a kill); the rerun logs each update once. A finished run rerun with the same
    stop does not validate again."""
    out = str(tmp_path / "r")
    cfg = tiny_cfg(data, out, max_updates=5, log_every=1, save_every=2, valid_every=0,
                   valid_bleu_sentences=0)
    Trainer(cfg, resume=False, log=_quiet).train()
    before = _log(out)
    with open(os.path.join(out, "log.jsonl"), "a") as f:
        f.write('{"update": 6, "lo')                      # a kill mid-write
    msgs = []
    t = Trainer(cfg, resume=os.path.join(out, "checkpoint_2.pt"), log=msgs.append)
    assert [r["update"] for r in _log(out)] == [1, 2]
    assert any("dropped 5 records after update 2" in m for m in msgs)
    t.train()
    after = _log(out)
    assert [r["update"] for r in after if "loss" in r] == [1, 2, 3, 4, 5]
    assert [r["update"] for r in after if "valid_loss" in r] == [5]
    assert after[-1]["valid_loss"] == before[-1]["valid_loss"]      # an exact resume
    s = Trainer(cfg, resume=True, log=_quiet).train()               # already finished
    assert _log(out) == after and s["valid_loss"] == after[-1]["valid_loss"]


def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_temporaries_of_killed_processes_are_removed(data, tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    dead = out / f"checkpoint_last.pt.tmp{_dead_pid()}"
    live = out / f"checkpoint_3.pt.tmp{os.getppid()}"            # a running process's save
    dead_log = out / f"log.jsonl.tmp{_dead_pid()}"
    other = out / "notes.tmp1"
    for f in (dead, live, dead_log, other):
        f.write_bytes(b"partial")
    msgs = []
    Trainer(tiny_cfg(data, str(out)), resume=True, log=msgs.append)
    assert not dead.exists() and not dead_log.exists()
    assert live.exists() and other.exists()
    assert any(str(dead) in m for m in msgs)
    assert remove_stale_temporaries(str(out)) == []


def test_failed_save_leaves_no_temporary_and_keeps_the_old_file(tmp_path, monkeypatch):
    path = str(tmp_path / "checkpoint_last.pt")
    atomic_save({"v": 1}, path)

    def dies_mid_write(obj, f, *a, **k):
        with (open(f, "wb") if isinstance(f, str) else contextlib.nullcontext(f)) as fh:
            fh.write(b"PK\x03\x04 half a zip")
        raise OSError("No space left on device")
    monkeypatch.setattr(torch, "save", dies_mid_write)
    with pytest.raises(OSError, match="No space"):
        atomic_save({"v": 2}, path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["checkpoint_last.pt"]
    assert torch.load(path) == {"v": 1}


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_unreadable_checkpoint_last_falls_back_to_a_numbered_one(data, tmp_path, damage):
    """A 0-byte / truncated checkpoint_last.pt: resume from the newest numbered checkpoint
    that loads, and the run still ends bitwise identical to an uninterrupted one; a missing
    checkpoint_last.pt or a damaged newest numbered one also falls back; nothing readable at
    all is an error."""
    kw = dict(max_updates=6, save_every=2, valid_every=0, valid_bleu_sentences=0)
    ref = Trainer(tiny_cfg(data, str(tmp_path / "ref"), **kw), resume=False, log=_quiet)
    ref.train()
    out = str(tmp_path / "r")
    Trainer(tiny_cfg(data, out, **dict(kw, max_updates=4)), resume=False, log=_quiet).train()

    def spoil(name):
        p = os.path.join(out, name)
        size = os.path.getsize(p)
        with open(p, "r+b") as f:
            f.truncate(0 if damage == "empty" else size // 2)
    spoil("checkpoint_last.pt")
    msgs = []
    t = Trainer(tiny_cfg(data, out, **kw), resume=True, log=msgs.append)
    assert t.update == 4 and any("checkpoint_last.pt" in m and "unreadable" in m for m in msgs)
    t.train()
    _assert_bitwise(_params(ref.model), _params(t.model))

    os.remove(os.path.join(out, "checkpoint_last.pt"))
    msgs.clear()
    assert Trainer(tiny_cfg(data, out, **kw), resume=True, log=msgs.append).update == 6
    assert any("checkpoint_last.pt is missing" in m for m in msgs)
    spoil("checkpoint_6.pt")
    assert Trainer(tiny_cfg(data, out, **kw), resume=True, log=_quiet).update == 4
    with pytest.raises(ValueError, match=r"checkpoint_6\.pt.* unreadable"):
        Trainer(tiny_cfg(data, out, **kw), resume=os.path.join(out, "checkpoint_6.pt"),
                log=_quiet)
    for name in os.listdir(out):
        if name.startswith("checkpoint_") and name != "checkpoint_best.pt":
            spoil(name)
    with pytest.raises(ValueError, match="no readable checkpoint.*--no-resume"):
        Trainer(tiny_cfg(data, out, **kw), resume=True, log=_quiet)


_KILLED_MID_SAVE = """
import io, os, signal, sys
import torch
sys.path.insert(0, {tests!r})
from test_train import tiny_cfg, _quiet
from janus_model.train import Trainer
real_save, calls = torch.save, [0]

def save_then_die(obj, f, *a, **k):
    calls[0] += 1
    if calls[0] < {kill_at}:
        return real_save(obj, f, *a, **k)
    buf = io.BytesIO()
    real_save(obj, buf)
    f.write(buf.getvalue()[:len(buf.getvalue()) // 2])
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)          # no handler, no cleanup: as a real kill

torch.save = save_then_die
Trainer(tiny_cfg({data!r}, {out!r}, **{kw!r}), resume=False, log=_quiet).train()
"""


def test_sigkill_mid_save_resumes_bitwise(data, tmp_path):
    """A process SIGKILLed half-way through writing checkpoint_last.pt of update 3 (the 5th
    save: last + numbered per update) leaves checkpoint_last.pt of update 2 and a partial
    temporary; the next run removes the temporary, resumes from update 2 and ends bitwise
    identical to an uninterrupted run."""
    kw = dict(max_updates=5, save_every=1, valid_every=0, valid_bleu_sentences=0)
    out = str(tmp_path / "r")
    script = _KILLED_MID_SAVE.format(tests=os.path.dirname(__file__), kill_at=5, data=data,
                                     out=out, kw=kw)
    env = dict(os.environ, PYTHONPATH=os.path.join(os.path.dirname(__file__), ".."),
               OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == -9, r.stderr[-2000:]
    assert any(".tmp" in f for f in os.listdir(out))
    t = Trainer(tiny_cfg(data, out, **kw), resume=True, log=_quiet)
    assert t.update == 2 and not any(".tmp" in f for f in os.listdir(out))
    t.train()
    ref = Trainer(tiny_cfg(data, str(tmp_path / "ref"), **kw), resume=False, log=_quiet)
    ref.train()
    _assert_bitwise(_params(ref.model), _params(t.model))


def test_truncate_log_edge_cases(tmp_path):
    p = str(tmp_path / "log.jsonl")
    assert truncate_log(p, 3) == 0                          # no log yet
    lines = ['{"update": 1}', '[1, 2]', '{"update": "x"}', '{"update": 3, "v": 1}',
             '{"update": 4}']
    with open(p, "w") as f:
        f.write("\n".join(lines) + "\n")
    assert truncate_log(p, 3) == 3
    assert open(p).read() == '{"update": 1}\n{"update": 3, "v": 1}\n'
    assert truncate_log(p, 3) == 0


def test_dropped_pairs_warning(data, tmp_path):
    msgs = []
    Trainer(tiny_cfg(data, str(tmp_path / "a"), max_tokens=10), resume=False, log=msgs.append)
    warn = [m for m in msgs if m.startswith("warning: train:")]
    assert len(warn) == 1 and "max_tokens 10" in warn[0] and "%" in warn[0]
    msgs.clear()
    Trainer(tiny_cfg(data, str(tmp_path / "b")), resume=False, log=msgs.append)
    assert not [m for m in msgs if "are dropped" in m]


def test_cuda_requested_without_cuda(data, tmp_path, monkeypatch):
    from janus_model.generate import resolve_device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device: 'cuda' was requested"):
        Trainer(tiny_cfg(data, str(tmp_path), device="cuda"), resume=False, log=_quiet)
    with pytest.raises(ValueError, match="device: 'cuda:1' was requested"):
        resolve_device("cuda:1")
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(ValueError, match="expected 'auto', 'cpu'"):
        resolve_device("tpu")


@pytest.mark.parametrize("field,value", [
    ("max_updates", -5), ("max_epochs", -1), ("max_minutes", -0.5), ("max_tokens", 4),
    ("update_freq", 0), ("warmup_updates", 0), ("lr", 0.0), ("lr", float("nan")),
    ("dropout", 1.0), ("label_smoothing", -0.1), ("heads", 0), ("heads", 3), ("dim", 0),
    ("keep_last", -1), ("valid_beam", 0), ("threads", -2), ("save_every", -10),
    ("vocab_size", 4), ("max_positions", 2), ("adam_betas", (0.9, 1.0)), ("device", "gpu"),
    ("empty_lines", "keep"), ("weights", "table6"), ("max_updates", 2.5)])
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{"data": "d", "out": "o", "dim": 32, field: value})


def test_config_accepts_its_defaults_and_zero_limits():
    cfg = TrainConfig(data="d", out="o", max_updates=0, save_every=0, valid_every=0,
                      keep_last=0, threads=0, dropout=0.0, clip_norm=0.0, max_minutes=1)
    assert cfg.adam_betas == (0.9, 0.98)
    cfg.check_stop_condition()
    with pytest.raises(ValueError, match="max_updates, max_epochs or max_minutes"):
        TrainConfig(data="d", out="o").check_stop_condition()
