"""The benchmark suite runs end to end in --quick mode and writes what it promises (JSON,
Markdown, plots) with the expected contenders; its helpers measure what they claim. No timing
assertions: the numbers depend on the machine and its load."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

import janus_kernels as jk
from benchmarks import attention as batt
from benchmarks import report
from benchmarks import train_step as bts
from benchmarks.common import (Settings, fmt_num, markdown_table, peak_memory_mb, time_fn)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:      # the parent package is missing
        return False


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One `python -m benchmarks --quick` in a subprocess (its thread setting, allocator
    calls and compile caches stay out of the test process)."""
    out = tmp_path_factory.mktemp("bench")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--threads", "1",
                        "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    with open(out / "results.json") as f:
        data = json.load(f)
    return out, data, r.stdout


def test_quick_run_writes_json_markdown_and_plots(quick_run):
    out, data, stdout = quick_run
    assert set(data["suites"]) == {"attention", "loss", "train_step"}
    assert data["meta"]["mode"] == "quick" and data["meta"]["threads"] == 1
    for key in ("gemm_fp32_gflops", "gemm_bf16_gflops", "tile_qk_fp32_gflops",
                "exp_gelem_s", "copy_gb_s"):
        assert data["machine"][key] > 0, key
    md = (out / "results.md").read_text()
    for heading in ("# janus-kernels benchmarks", "## Machine peaks", "## Attention",
                    "## Losses", "## Training step"):
        assert heading in md
    pngs = sorted(p.name for p in out.glob("*.png"))
    if _has("matplotlib"):
        assert "attention_pct_peak.png" in pngs and any(p.startswith("loss_") for p in pngs)
    else:
        assert "matplotlib not available" in stdout


def test_quick_attention_contenders_and_sanity(quick_run):
    _, data, _ = quick_run
    rows = data["suites"]["attention"]["rows"]
    names = {r["contender"] for r in rows}
    expected = {"eager_dense", "sdpa_dense", "flex_compiled"}
    if jk._ext.available():
        expected.add("ours:cpu")
    assert expected <= names
    assert {r["case"] for r in rows} == set(batt.FAMILIES)
    assert {r["dtype"] for r in rows} == {"fp32", "bf16"}
    assert {r["pass"] for r in rows} == {"fwd", "fwd+bwd"}
    for n in expected - {"flex_compiled"}:
        ok = [r for r in rows if r["contender"] == n and r["status"] == "ok"]
        assert len(ok) == len([r for r in rows if r["contender"] == n]), n
        assert all(r["ms"] > 0 and r["useful_gflop"] > 0 for r in ok)
    # --quick does not compile: flex is listed as skipped, with the reason
    flex = [r for r in rows if r["contender"] == "flex_compiled"]
    assert flex and all(r["status"] == "skipped" and r["note"] for r in flex)
    # every baseline computes the same attention as ours (fp32: tight; bf16: loose)
    for r in rows:
        if r["status"] == "ok" and "max_diff" in r:
            assert r["max_diff"] < (1e-4 if r["dtype"] == "fp32" else 0.1), r
    # the speedup column is filled in against ours
    if jk._ext.available():
        assert all("vs_ours" in r for r in rows if r["status"] == "ok")
    # the machine floor: positive, the larger of its parts (not asserted <= ms: tiny cases
    # live in cache, where the DRAM-bandwidth part is no bound)
    for r in rows:
        if r["status"] == "ok":
            assert r["floor_ms"] > 0, r
            assert r["floor_ms"] == max(r["compute_floor_ms"], r["memory_floor_ms"])
            assert abs(r["vs_floor"] - r["ms"] / r["floor_ms"]) < 1e-9
    md = (quick_run[0] / "results.md").read_text()
    for n in expected:
        assert n in md


def test_quick_loss_and_train_step_report_what_is_missing(quick_run):
    _, data, _ = quick_run
    loss = data["suites"]["loss"]
    by = {}
    for r in loss["rows"]:
        by.setdefault(r["contender"], []).append(r)
    assert {"ours", "eager", "compiled"} <= set(by)
    assert {r["case"] for r in loss["rows"]} == {"symmetric_kl", "cross_entropy", "janus_loss",
                                                 "fused_linear"}
    assert all(r["status"] == "ok" for r in by["eager"])
    if _has("janus_kernels.losses"):
        assert all(r["status"] == "ok" for r in by["ours"])
        for r in by["ours"]:
            if r["pass"] == "fwd":
                assert r["rel_diff"] < 1e-4, r
    else:
        assert all(r["status"] == "skipped" for r in by["ours"])
        assert any("not available" in s for s in loss["skipped"])
    ts = data["suites"]["train_step"]
    if _has("janus_model.model"):
        names = {r["config"]: r for r in ts["rows"]}
        assert {"AR", "CMLM", "JANUS-fused", "JANUS-dense-reference"} <= set(names)
        assert all(r["status"] == "ok" and r["ms"] > 0 and r["step_gflop"] > 0
                   for r in ts["rows"]), ts["rows"]
        # every switch keeps the math: all configurations of a mode give one loss value
        for mode in ("janus", "cmlm"):
            vals = [r["loss"] for r in ts["rows"] if r["mode"] == mode]
            assert len(vals) >= 2 and max(vals) - min(vals) <= 1e-4 * abs(vals[0]), (mode, vals)
        ratios = ts["extra"]["ratios"]
        # JANUS runs more rows than CMLM: its step needs more FLOPs
        assert ratios["JANUS-fused / CMLM FLOPs"] > 1.5
        # each design: its time and FLOP ratio against its CMLM side by side
        assert all(r["vs_cmlm"] > 0 and r["flops_vs_cmlm"] > 0 for r in ts["rows"])
        # pruning the rows nobody reads saves FLOPs in every mode
        for mode in ("AR", "CMLM", "JANUS-fused"):
            assert 0 < ratios[f"{mode} pruned / unpruned FLOPs"] < 1, mode
        assert "authors + prune unread rows" in names
    else:
        assert ts["rows"] == [] and any("not available" in s for s in ts["skipped"])
    md = (quick_run[0] / "results.md").read_text()
    assert "not available" in md or ("ours" in md and "JANUS-fused" in md)


def test_report_cli_rerenders(quick_run, tmp_path):
    out, data, _ = quick_run
    target = tmp_path / "BENCHMARKS.md"
    report.main([str(out / "results.json"), "-o", str(target)])
    text = target.read_text()
    assert text.startswith("# janus-kernels benchmarks")
    assert "| mask | shape | dtype | pass |" in text
    rel = os.path.relpath(out, tmp_path)
    if (out / "attention_pct_peak.png").exists():
        assert f"]({os.path.join(rel, 'attention_pct_peak.png')})" in text


# ================================================================ helpers, no subprocess
def test_flex_mask_mod_matches_descriptor():
    """The FlexAttention contender's mask_mod evaluates exactly the descriptor's predicate."""
    g = torch.Generator().manual_seed(0)
    for fam in batt.FAMILIES:
        case = batt.make_case(fam, batt.Shape("t", 3, 13), g, "cpu")
        d = case.desc
        mm = batt.flex_mask_mod(d)
        b = torch.arange(d.batch_size)[:, None, None]
        i = torch.arange(d.q_len)[None, :, None]
        j = torch.arange(d.kv_len)[None, None, :]
        got = mm(b, torch.zeros((), dtype=torch.long), i, j)
        assert torch.equal(got.expand(d.batch_size, d.q_len, d.kv_len), d.materialize()), fam
        # the eager baseline's own dense mask agrees on every row that sees a key
        dense = case.dense_builder()
        rows = case.real_rows[:, :, None]
        assert torch.equal(dense & rows, d.materialize()), fam


def test_peak_memory_and_timing_helpers():
    n = 16 * 1024 * 1024                      # 64 MiB of float32, touched
    mb = peak_memory_mb(lambda: torch.ones(n), "cpu")
    if mb is not None:                        # None: /proc/self/clear_refs not writable
        assert 56 <= mb <= 200, mb
        assert peak_memory_mb(lambda: None, "cpu") < 16
    s = Settings.for_mode("quick", threads=torch.get_num_threads())
    t = time_fn(lambda: torch.ones(1000).sum(), s, repeats=3)
    assert t.repeats >= 1 and 0 < t.ms_min <= t.ms <= t.ms_max
    assert t.cpu_util is not None and t.cpu_util > 0


def test_table_and_number_formatting():
    assert fmt_num(None) == "—" and fmt_num(1234.5) == "1234" and fmt_num(0.012345) == "0.0123"
    assert fmt_num(3) == "3" and fmt_num(12.34) == "12.3"
    t = markdown_table([{"a": 1.0, "b": "x|y"}], [("a", "A"), ("b", "B")], {"b": str})
    assert t.splitlines() == ["| A | B |", "|---|---|", "| 1.00 | x\\|y |"]


def test_cli_rejects_unknown_suite():
    from benchmarks.__main__ import parse_args
    with pytest.raises(SystemExit):
        parse_args(["--only", "attention,nope"])
    assert parse_args(["--quick", "--only", "loss"]).only == ["loss"]


@pytest.mark.slow
def test_compiled_contenders_run_on_a_tiny_case(tmp_path):
    """flex_compiled and the compiled loss baselines (cold torch.compile: slow)."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--threads", "1",
                        "--flex", "--compile", "--only", "attention,loss", "--out",
                        str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    data = json.loads((tmp_path / "results.json").read_text())
    flex = [x for x in data["suites"]["attention"]["rows"] if x["contender"] == "flex_compiled"]
    fwd32 = [x for x in flex if x["pass"] == "fwd" and x["dtype"] == "fp32"]
    assert fwd32 and all(x["status"] == "ok" and x["max_diff"] < 1e-4 for x in fwd32)
    assert all(x["status"] == "skipped" for x in flex if x["pass"] == "fwd+bwd")
    comp = [x for x in data["suites"]["loss"]["rows"] if x["contender"] == "compiled"]
    assert comp and all(x["status"] == "ok" for x in comp)


def test_io_bytes_counts_real_rows_and_whole_outputs():
    """The memory floor's byte count, by hand for one sample: q rows that see a key and k/v
    rows below kv_len are read, the whole (padded) output and the fp32 lse are written."""
    gen = torch.Generator().manual_seed(0)
    case = batt.make_case("causal_pad", batt.Shape("t", 1, 8), gen, "cpu")
    d = case.desc
    n = int(d.params[0, 0])                      # KV_LEN = N; causal rows 0..N-1 see keys
    row = batt.H * batt.HEAD_DIM * 4
    fwd = (n + 2 * n) * row + d.q_len * row + batt.H * d.q_len * 4
    assert batt._io_bytes(case, torch.float32, "fwd") == fwd
    bwd = fwd + (3 * n + 2 * n) * row + batt.H * d.q_len * 4 + d.q_len * row + 2 * d.kv_len * row
    assert batt._io_bytes(case, torch.float32, "fwd+bwd") == bwd
    assert batt._io_bytes(case, torch.bfloat16, "fwd") < fwd


# ====================================================================== train_step, no model run
def _closed_form_gflop(setup, src, batch, mode, prune, project="used", passes=1):
    """The step FLOPs from the spec's row counts (§1, §3), independent of the layout code:
    AR rows 2T (queries only in a pruned last layer, which see T(T+1)/2 keys); NAR rows
    U+2M content (one fewer G row when pruned and M > 0) + M queries, each real row seeing
    U+M keys (M rows + M queries in a pruned last layer); CMLM rows U+M (M when pruned)."""
    D, Fd, V, Lyr = setup.dim, setup.ffn, setup.vocab, setup.layers
    B, S = src.shape
    s = (src != 1).sum(1).double()
    T = batch.ar.lengths.double()
    U, M = batch.nar.U.double(), batch.nar.M.double()
    Tp = batch.ar.seq_len

    def layer(rows_pad, keys_pad, real_rows, visible):
        return (B * rows_pad * (4 * D * D + 2 * D * Fd) + B * keys_pad * 2 * D * D
                + 2 * D * float(visible.sum()) + 2 * D * float((real_rows * s).sum()))

    def decoder(full, last):
        return Lyr * layer(*full) if not prune else (Lyr - 1) * layer(*full) + layer(*last)

    mm = (passes if mode == "janus" else 1) * Lyr * (
        B * S * (4 * D * D + 2 * D * Fd) + 2 * D * float((s ** 2).sum()) + B * S * 2 * D * D)
    proj = 0.0
    if mode in ("ar", "janus"):
        mm += decoder((2 * Tp, Tp, 2 * T, T * (T + 1)), (Tp, Tp, T, T * (T + 1) / 2))
        proj += float(T.sum()) if project == "used" else B * Tp
    if mode == "janus":
        dead = (M > 0).double() if prune else 0 * M
        Lc = int((U + 2 * M - dead).max())
        Lq = int(M.max())
        mm += decoder((Lc + Lq, Lc, U + 3 * M - dead, (U + 3 * M - dead) * (U + M)),
                      (2 * Lq, Lc, 2 * M, 2 * M * (U + M)))
        proj += 2 * float(M.sum()) if project == "used" else B * (2 * Lq if prune else Lc + Lq)
    if mode == "cmlm":
        n, Lq = int((U + M).max()), int(M.max())
        mm += decoder((n, n, U + M, (U + M) ** 2), (Lq, n, M, M * (U + M)))
        proj += float(M.sum()) if project == "used" else B * (Lq if prune else n)
    return 6 * (mm + proj * D * V) / 1e9


@pytest.mark.parametrize("setup_name", ["quick", "iwslt"])
def test_step_flops_match_the_closed_form(setup_name):
    from janus_model import layout, masking
    setup = bts.SETUPS[setup_name]
    src, _, batch = bts._make_batch(setup, torch.Generator().manual_seed(1), layout, masking,
                                    "cpu")
    for mode in ("ar", "cmlm", "janus"):
        for prune in (False, True):
            for project in ("used", "all"):
                for passes in ((1, 2) if mode == "janus" else (1,)):
                    cfg = bts.StepConfig("x", mode, encoder_passes=passes, project=project,
                                         prune=prune)
                    got = bts.step_gflop(setup, src, batch, cfg, layout.PAD)
                    want = _closed_form_gflop(setup, src, batch, mode, prune, project, passes)
                    assert abs(got - want) <= 1e-9 * want, (mode, prune, project, passes)


def test_iwslt_setup_and_flops_only_cli(capsys):
    """The authors' IWSLT14 configuration (spec §7.1) with 4096-token batches, selectable
    on its own; --flops-only gives every design's FLOP ratio without running the model."""
    s = bts.SETUPS["iwslt"]
    assert (s.layers, s.dim, s.ffn, s.heads) == (6, 512, 1024, 4) and 9000 <= s.vocab <= 11000
    assert s.B * (s.Nmax + 2) <= 4096 < (s.B + 1) * (s.Nmax + 2)
    n = torch.get_num_threads()
    try:                                           # main() sets the thread count
        assert bts.main(["--setup", "iwslt", "--flops-only", "--timing", "quick",
                         "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(n)
    out = capsys.readouterr().out
    assert "B=157" in out and "JANUS-fused pruned / unpruned FLOPs" in out
    res = bts.run(Settings.for_mode("quick", threads=1), {}, log=lambda _: None,
                  setup="iwslt", flops_only=True)
    assert all(r["status"] == "not run" and r["step_gflop"] > 0 and r["flops_vs_cmlm"] > 0
               and "ms" not in r for r in res.rows)
    with pytest.raises(ValueError, match="setup"):
        bts.run(Settings.for_mode("quick"), {}, setup="wmt")
