"""CLI: --help of every command, the declared console scripts, and a tiny train -> generate
-> evaluate -> average round trip in a temporary directory."""
import io
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from janus_model import cli

ROOT = os.path.join(os.path.dirname(__file__), "..")
DATA = os.path.join(ROOT, "janus_model", "data", "ddtp_small")


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    yield


@pytest.mark.parametrize("cmd", ["train", "generate", "evaluate", "average", "compare"])
def test_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([cmd, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage:" in out
    if cmd == "train":
        assert "--max-minutes" in out and "--update-freq" in out and "--bf16" in out
    if cmd == "generate":
        assert "--report" in out and "--decoder" in out


def test_module_entry_point_and_console_scripts(capsys):
    assert cli.main(["--help"]) == 0 and "evaluate" in capsys.readouterr().out
    assert cli.main(["bogus"]) == 2
    r = subprocess.run([sys.executable, "-m", "janus_model", "--help"], capture_output=True,
                       text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
    assert r.returncode == 0 and "train" in r.stdout
    try:
        import tomllib
    except ImportError:                                # Python 3.10
        pytest.skip("tomllib needs Python 3.11")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    assert scripts["janus-train"] == "janus_model.cli:train_main"
    assert scripts["janus-generate"] == "janus_model.cli:generate_main"
    assert callable(cli.train_main) and callable(cli.generate_main)


def test_arch_preset_and_overrides():
    args = cli.build_train_parser().parse_args(
        ["--data", "d", "--out", "o", "--arch", "tiny", "--dim", "64", "--adam-betas", "0.8",
         "0.9", "--bf16"])
    cfg = cli.config_from_args(args)
    assert (cfg.dim, cfg.encoder_layers, cfg.ffn_dim) == (64, 2, 512)   # flag beats preset
    assert cfg.adam_betas == (0.8, 0.9) and cfg.bf16 and cfg.progress
    assert cfg.lr == 5e-4 and cfg.mode == "janus"
    with pytest.raises(SystemExit):
        cli.build_train_parser().parse_args(["--data", "d", "--out", "o", "--mode", "nat"])


def test_train_help_shows_the_default_of_every_arch(capsys):
    """The preset-dependent flags show each preset's value, not the iwslt dataclass default
    whatever --arch says."""
    with pytest.raises(SystemExit):
        cli.main(["train", "--arch", "tiny", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for flag, name in (("--dim", "dim"), ("--encoder-layers", "encoder_layers"),
                       ("--dropout", "dropout")):
        per = ", ".join(f"{a} {cli.ARCH_PRESETS[a][name]}" for a in sorted(cli.ARCH_PRESETS))
        assert f"(default by --arch: {per})" in out, flag
    assert "(default 512)" not in out and "(default 0.3)" not in out
    assert "--w-kl-ar-aux W" in out and "released 3, paper 2" in out


@pytest.mark.parametrize("build", [cli.build_train_parser, cli.build_generate_parser])
def test_every_option_is_explained(build):
    missing = [a.option_strings or a.dest for a in build()._actions
               if not (a.help and a.help.strip())]
    assert not missing


def _corpus_and_spm(tmp_path):
    data = _corpus(str(tmp_path / "data"), n_train=8)
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a sentencepiece model")
    return data, str(bad)


def test_cli_errors_are_messages_with_status_2(tmp_path, capsys, monkeypatch):
    """Bad settings and data: one line naming the problem, exit status 2, no traceback."""
    data, bad_spm = _corpus_and_spm(tmp_path)
    base = ["--out", str(tmp_path / "o"), "--arch", "tiny", "--no-progress", "--device", "cpu"]
    cases = [
        (["--data", str(tmp_path / "nodata"), "--max-updates", "1"], "nodata"),
        (["--data", data, "--max-updates", "-5"], "max_updates"),
        (["--data", data], "set max_updates, max_epochs or max_minutes"),
        (["--data", data, "--max-updates", "1", "--spm-model", bad_spm], "bad.model"),
        (["--data", data, "--max-updates", "1", "--spm-model", str(tmp_path / "none.model")],
         "none.model"),
    ]
    for argv, needle in cases:
        assert cli.train_main(argv + base) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("janus-train: error: ") and needle in err, (argv, err)
        assert "Traceback" not in err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.train_main(["--data", data, "--max-updates", "1", "--device", "cuda",
                           "--out", str(tmp_path / "o")]) == 2
    assert "'cuda' was requested" in capsys.readouterr().err
    assert cli.generate_main(["--checkpoint", str(tmp_path / "none.pt")]) == 2
    assert "none.pt" in capsys.readouterr().err
    assert cli.generate_main(["--checkpoint", bad_spm, "--device", "cuda"]) == 2
    assert "'cuda' was requested" in capsys.readouterr().err
    assert cli.main(["average", "--dir", str(tmp_path), "--output", "x.pt"]) == 2
    assert "asked for 5" in capsys.readouterr().err


def test_repetition_ratio_and_bleu():
    from janus_model.generate import bleu, repetition_ratio
    assert repetition_ratio([[5, 5, 6, 6, 6], [7], []]) == 3 / 6
    assert repetition_ratio([[4, 5, 4]]) == 0.0 and repetition_ratio([]) == 0.0
    assert math.isclose(bleu(["the cat sat on the mat"], ["the cat sat on the mat"]), 100.0)
    assert bleu(["a b c d"], ["w x y z"]) == 0.0
    with pytest.raises(ValueError, match="2 hypotheses but 1"):
        bleu(["a", "b"], ["a"])


def _corpus(d, n_train=40, n_test=6):
    os.makedirs(d)
    for split, src_split, n in (("train", "train", n_train), ("valid", "valid", 4),
                                ("test", "test", n_test)):
        for lang in ("de", "en"):
            lines = open(os.path.join(DATA, f"{src_split}.{lang}"),
                         encoding="utf-8").read().splitlines()[:n]
            with open(os.path.join(d, f"{split}.{lang}"), "w", encoding="utf-8") as f:
                f.write("".join(x + "\n" for x in lines))
    return d


def test_train_generate_evaluate_round_trip(tmp_path, capsys, monkeypatch):
    data = _corpus(str(tmp_path / "data"))
    out = str(tmp_path / "run")
    common = ["--data", data, "--out", out, "--arch", "tiny", "--dim", "32", "--ffn-dim", "64",
              "--encoder-layers", "1", "--decoder-layers", "1", "--vocab-size", "150",
              "--max-tokens", "256", "--warmup-updates", "2", "--save-every", "1",
              "--valid-bleu-sentences", "2", "--no-progress", "--threads", "1",
              "--device", "cpu", "--log-every", "1"]
    assert cli.train_main(common + ["--max-updates", "2"]) == 0
    assert '"update": 2' in capsys.readouterr().out
    # a second invocation resumes from checkpoint_last.pt and continues
    assert cli.train_main(common + ["--max-updates", "3"]) == 0
    o = capsys.readouterr().out
    assert "resuming from" in o and '"update": 3' in o
    for f in ("spm.model", "checkpoint_last.pt", "checkpoint_best.pt", "checkpoint_3.pt",
              "log.jsonl"):
        assert os.path.isfile(os.path.join(out, f)), f
    ckpt = os.path.join(out, "checkpoint_last.pt")

    hyp = str(tmp_path / "hyp.en")
    for decoder in ("ar", "nar"):
        assert cli.generate_main(["--checkpoint", ckpt, "--input", os.path.join(data, "test.de"),
                                  "--output", hyp, "--decoder", decoder, "--beam", "2",
                                  "--iterations", "2", "--reference",
                                  os.path.join(data, "test.en"), "--max-len-b", "5"]) == 0
        err = capsys.readouterr().err
        assert "ms/sample" in err and "BLEU = " in err
        assert len(open(hyp, encoding="utf-8").read().splitlines()) == 6

    from janus_model.generate import load_model, translate
    model, vocab, _ = load_model(ckpt)
    tr = translate(model, vocab, ["Dieses Paket", "Hallo Welt"], decoder="nar", iterations=2)
    assert len(tr.hyps) == 2 and not {0, 1, 2} & {i for t in tr.tokens for i in t}
    assert [vocab.decode(t) for t in tr.tokens] == tr.hyps

    plot = str(tmp_path / "bleu.png")
    assert cli.evaluate_main(["--checkpoint", ckpt, "--limit", "3", "--latency-sentences", "2",
                              "--beam", "2", "--max-len-b", "5", "--plot", plot,
                              "--json", str(tmp_path / "rep.json")]) == 0
    o = capsys.readouterr().out
    for s in ("NAR mask-predict, T=0", "NAR mask-predict, T=10", "AR beam 2",
              "Token repetition ratio", "Latency at batch size 1", "speedup"):
        assert s in o, s
    with open(plot, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # compare: two reports side by side (one stripped to a CMLM-like report without AR)
    rep = json.load(open(tmp_path / "rep.json"))
    for k in ("bleu_ar", "repetition_ar"):
        rep.pop(k)
    rep["latency_ms"].pop("ar")
    json.dump(rep, open(tmp_path / "nar_only.json", "w"))
    cplot = str(tmp_path / "cmp.png")
    assert cli.main(["compare", f"janus={tmp_path / 'rep.json'}",
                     f"cmlm={tmp_path / 'nar_only.json'}", "--plot", cplot]) == 0
    o = capsys.readouterr().out
    lines = o.splitlines()
    assert "janus" in lines[1] and "cmlm" in lines[1]
    ar_row = next(line for line in lines if line.strip().startswith("AR beam 2"))
    assert ar_row.split()[-1] == "-"                      # the NAR-only model has no AR BLEU
    for s in ("NAR mask-predict, T=10", "Token repetition ratio (%)",
              "Latency at batch size 1 (ms/sample)", "Speed-up of NAR"):
        assert s in o, s
    with open(cplot, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit):
        cli.main(["compare", "no-label-here.json"])

    # stdin -> stdout, and the --report flag of janus-generate
    monkeypatch.setattr(sys, "stdin", io.StringIO("Dieses Paket enthält Dokumentation.\nHallo\n"))
    assert cli.generate_main(["--checkpoint", ckpt, "--decoder", "nar", "--iterations", "1"]) == 0
    cap = capsys.readouterr()
    assert len(cap.out.splitlines()) == 2 and "ms/sample at batch size 64" in cap.err
    assert cli.generate_main(["--checkpoint", ckpt, "--report", "--limit", "2", "--beam", "2",
                              "--latency-sentences", "1", "--max-len-b", "3",
                              "--plot", "none"]) == 0
    assert "NAR mask-predict, T=4" in capsys.readouterr().out

    avg = str(tmp_path / "avg.pt")
    assert cli.average_main(["--dir", out, "--last", "2", "--output", avg]) == 0
    assert cli.generate_main(["--checkpoint", avg, "--input", os.path.join(data, "test.de"),
                              "--output", hyp, "--decoder", "nar", "--iterations", "1"]) == 0
    assert cli.generate_main(["--checkpoint", ckpt, "--input", str(tmp_path / "missing.de")]) == 2
    assert "missing.de" in capsys.readouterr().err
