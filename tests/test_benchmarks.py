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
    mc = data["machine"]
    for key in ("gemm_fp32_gflops", "gemm_bf16_gflops", "tile_qk_fp32_gflops",
                "exp_gelem_s", "copy_gb_s"):
        assert mc[key] > 0, key
    # the compute peaks: the largest candidate, named; bf16 never below fp32 (widening)
    for dt in ("fp32", "bf16"):
        cands = {k: v for k, v in mc["peak_candidates"][dt].items() if v is not None}
        assert mc[f"peak_{dt}_gflops"] == max(cands.values())
        assert cands[mc[f"peak_{dt}_source"]] == mc[f"peak_{dt}_gflops"]
    assert mc["peak_fp32_gflops"] >= mc["gemm_fp32_gflops"]
    assert mc["peak_bf16_gflops"] >= mc["peak_fp32_gflops"]
    # a candidate that could not be measured says why
    for key in ("fma_fp32_gflops", "brgemm_qk_fp32_gflops", "brgemm_qk_bf16_gflops"):
        assert mc[key] is not None or mc["na"][key], key
    assert data["meta"]["isa"]["requested"] == "native"
    assert data["settings"]["call_budget_s"] > 0
    md = (out / "results.md").read_text()
    for heading in ("# janus-kernels benchmarks", "## Machine peaks", "## Attention",
                    "## Losses", "## Training step"):
        assert heading in md
        # every table header names the CPU and the ISA levels
        section = md.split(heading, 1)[1].split("\n", 1)[1].lstrip("\n")
        assert section.startswith(("CPU: ", "Run ")), section[:200]
    assert md.count(f"CPU: {data['meta']['cpu']}; ours:") >= 5
    assert "ATen CPU capability" in md
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
    expected |= {f"ours:{b}" for b, why in batt.our_backends("cpu").items() if why is None}
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
    # a contender that fails says why (never a bare "failed")
    for r in rows:
        if r["status"] != "ok":
            assert r["note"] and r["note"] != "failed", r
    # ours computes every dtype at the level in use (bf16 included, at any ISA level)
    assert all(r["status"] == "ok" for r in rows if r["contender"].startswith("ours")), \
        [r for r in rows if r["contender"].startswith("ours") and r["status"] != "ok"]
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


def test_flex_mask_mod_reads_key_start_and_documents():
    """KEY_START and the DOCUMENTS kind (issue 14) in the FlexAttention contender's mask_mod."""
    from _mask_cases_hf import HF_CASES
    for name, make in HF_CASES.items():
        d = make()
        mm = batt.flex_mask_mod(d)
        b = torch.arange(d.batch_size)[:, None, None]
        i = torch.arange(d.q_len)[None, :, None]
        j = torch.arange(d.kv_len)[None, None, :]
        got = mm(b, torch.zeros((), dtype=torch.long), i, j)
        assert torch.equal(got.expand(d.batch_size, d.q_len, d.kv_len), d.materialize()), name


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


def test_train_step_rounds_time_every_mode_n_times(tmp_path):
    """--rounds N: every configuration timed N times (no budget, no time-boxing, which would
    stop after one call of a multi-second step); --modes-only drops the ablations."""
    import json
    n = torch.get_num_threads()
    try:
        assert bts.main(["--setup", "quick", "--timing", "quick", "--threads", "1",
                         "--rounds", "3", "--modes-only", "--json",
                         str(tmp_path / "r.json")]) == 0
    finally:
        torch.set_num_threads(n)
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert [r["config"] for r in rows] == ["AR", "CMLM", "CMLM-dense", "JANUS-fused",
                                           "JANUS-dense-reference"]
    assert all(r["status"] == "ok" and r["repeats"] == 3 for r in rows), rows
    with pytest.raises(SystemExit):
        bts.main(["--setup", "quick", "--rounds", "0"])

# ============================================= machine peaks, ISA caps, time-boxing (issue 12)
from benchmarks import isa as bisa                                   # noqa: E402
from benchmarks import peaks as bpeaks                               # noqa: E402
from benchmarks.common import progress_cell, time_interleaved        # noqa: E402
from benchmarks.timebox import PREDICT_MARGIN, CallBudget            # noqa: E402


def test_select_peak_takes_the_largest_finite_rate():
    assert bpeaks.select_peak({"a": 85.6, "b": None, "c": 102.0, "d": float("nan"),
                               "e": -1.0}) == (102.0, "c")
    assert bpeaks.select_peak({"a": None}) == (None, None)
    assert bpeaks.select_peak({}) == (None, None)


@pytest.mark.parametrize("mm_bf16, bf16_source", [(0.9, "fp32 peak, widened (FMA loop (avx2))"),
                                                  (2451.0, "torch.mm")])
def test_peak_candidates_zen2_like_machine(mm_bf16, bf16_source):
    """The Zen 2 case of issue 12: torch.mm fp32 (85.6) below our kernel's useful rate, bf16
    GEMM through a slow path. The peak must be the FMA loop, and bf16 never below fp32."""
    mc = {"isa_level": "avx2", "gemm_fp32_gflops": 85.6, "tile_qk_fp32_gflops": 70.0,
          "tile_pv_fp32_gflops": 60.0, "brgemm_qk_fp32_gflops": 110.0,
          "brgemm_pv_fp32_gflops": None, "fma_fp32_gflops": 150.0,
          "gemm_bf16_gflops": mm_bf16, "tile_qk_bf16_gflops": 0.5, "tile_pv_bf16_gflops": 0.4,
          "brgemm_qk_bf16_gflops": None, "brgemm_pv_bf16_gflops": None}
    cands = bpeaks.peak_candidates(mc)
    assert bpeaks.select_peak(cands["fp32"]) == (150.0, "FMA loop (avx2)")
    assert cands["fp32"]["brgemm tile (avx2)"] == 110.0
    peak, src = bpeaks.select_peak(cands["bf16"])
    assert src == bf16_source and peak == max(150.0, mm_bf16)
    # the floors use the selected peak; results from before the selection use torch.mm
    mc.update(peak_fp32_gflops=150.0, peak_bf16_gflops=peak)
    assert bpeaks.compute_peak(mc, torch.float32) == 150.0
    assert bpeaks.compute_peak(mc, torch.float16) == peak
    assert bpeaks.compute_peak({"gemm_fp32_gflops": 85.6}, torch.float32) == 85.6


class _FakeLevelOps:
    """An ISA level's op namespace: records the calls, returns fixed rates."""

    def __init__(self):
        self.calls = []

    def fma_peak_gflops(self, iters):
        self.calls.append(("fma", iters))
        return 123.0

    def brgemm_tile_gflops(self, m, n, k, bf16, iters):
        self.calls.append(("tile", m, n, k, bf16, iters))
        if bf16 and k % 2:
            raise RuntimeError("bf16: needs an even K")
        return 45.0 + bf16


@pytest.mark.parametrize("level", ["avx2", "avx512", "amx"])
def test_isa_level_peaks_measures_the_level_ops(level):
    ops = _FakeLevelOps()
    vals, na = bpeaks.isa_level_peaks(Settings.for_mode("quick"), level, ops, None)
    assert vals["fma_fp32_gflops"] == 123.0
    assert vals["brgemm_qk_fp32_gflops"] == vals["brgemm_pv_fp32_gflops"] == 45.0
    tiles = {c[1:4] for c in ops.calls if c[0] == "tile"}
    assert tiles == {(64, 512, 64), (64, 64, 512)}          # the attention tiles (M, N, K)
    if level == "amx":                                       # bf16 brgemm only with AMX
        assert vals["brgemm_qk_bf16_gflops"] == 46.0 and not na
    else:
        assert vals["brgemm_qk_bf16_gflops"] is None
        assert "widens bf16" in na["brgemm_qk_bf16_gflops"]
        assert not any(c[0] == "tile" and c[4] for c in ops.calls)


def test_isa_level_peaks_records_why_when_ops_are_missing():
    s = Settings.for_mode("quick")
    vals, na = bpeaks.isa_level_peaks(s, "avx2", object(), None)   # a build without the ops
    assert all(v is None for v in vals.values())
    assert "fma_peak_gflops" in na["fma_fp32_gflops"]
    assert "brgemm_tile_gflops" in na["brgemm_pv_fp32_gflops"]
    vals, na = bpeaks.isa_level_peaks(s, None, None, "no compiled CPU level here")
    assert set(na) == set(vals) and set(na.values()) == {"no compiled CPU level here"}


@pytest.mark.parametrize("level", ["avx2", "avx512", "amx"])
def test_isa_cap_env_sets_every_library_cap(level):
    base = {"PATH": "/bin", "MKL_ENABLE_INSTRUCTIONS": "AVX512"}
    env = bisa.cap_env(level, base)
    assert env["JANUS_CPU_ISA"] == level and env["PATH"] == "/bin"
    assert set(bisa.CAP_VARS) <= set(env)
    assert base == {"PATH": "/bin", "MKL_ENABLE_INSTRUCTIONS": "AVX512"}   # not modified
    assert bisa.needs_subprocess(level, base)
    assert not bisa.needs_subprocess(level, env)


def test_isa_cap_env_avx2_values_and_native():
    env = bisa.cap_env("avx2", {})
    cache = env.pop("TORCHINDUCTOR_CACHE_DIR")   # a compile cache of its own per level
    assert cache.endswith("_isa_avx2")
    assert env == {"JANUS_CPU_ISA": "avx2", "ATEN_CPU_CAPABILITY": "avx2",
                   "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert bisa.cap_env("avx2", {"TORCHINDUCTOR_CACHE_DIR": "/x"})["TORCHINDUCTOR_CACHE_DIR"] == \
        "/x_isa_avx2"
    assert bisa.cap_env("native", {"X": "1"}) == {"X": "1"}
    assert not bisa.needs_subprocess("native", {})
    with pytest.raises(ValueError, match="isa"):
        bisa.cap_env("sse4", {})


def test_isa_level_mismatch_and_header_line():
    info = {"ours_level": "avx2", "ours_why": "capped by JANUS_CPU_ISA=avx2; detected amx",
            "ours": "avx2 (...)", "aten_cpu_capability": "AVX2",
            "caps": {"JANUS_CPU_ISA": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
            "requested": "avx2"}
    assert bisa.level_mismatch("avx2", info) is None
    assert "cannot run amx" in bisa.level_mismatch("amx", info)
    assert bisa.level_mismatch("amx", {"ours": "n/a (old build)"}) is None
    line = bisa.header_line({"cpu": "AMD EPYC 7B12", "isa": info})
    for part in ("AMD EPYC 7B12", "**avx2**", "ATen CPU capability AVX2",
                 "MKL_ENABLE_INSTRUCTIONS=AVX2", "--isa avx2"):
        assert part in line, (part, line)


def test_cli_isa_reruns_in_a_capped_subprocess(monkeypatch):
    from benchmarks import __main__ as bmain
    for k in bisa.CAP_VARS + ("JANUS_BENCH_ISA_CHILD",):
        monkeypatch.delenv(k, raising=False)
    seen = {}

    def fake_run(cmd, env):
        seen.update(cmd=cmd, env=env)
        return subprocess.CompletedProcess(cmd, 7)
    monkeypatch.setattr(bmain.subprocess, "run", fake_run)
    argv = ["--isa", "avx2", "--quick", "--only", "loss"]
    assert bmain.main(argv) == 7                          # the child's exit status
    assert seen["cmd"][1:] == ["-m", "benchmarks"] + argv
    assert all(seen["env"][k] == v for k, v in bisa.cap_env("avx2", {}).items())
    assert bmain.parse_args(argv).out == os.path.join("benchmarks", "results", "isa_avx2")
    assert bmain.parse_args(["--quick"]).out == os.path.join("benchmarks", "results")
    with pytest.raises(SystemExit):
        bmain.parse_args(["--isa", "sse4"])


def test_call_budget_predicts_and_timeboxes():
    b = CallBudget(limit_s=2.0)
    kind = ("eager_dense", "bf16", "fwd+bwd")
    assert b.skip_before_call(kind, 1e6) is None            # never seen: call it
    assert not b.observe(kind, 1e5, 0.5, "janus_nar/iwslt")  # within the budget
    assert b.predicted_s(kind, 1e6) == pytest.approx(5.0)
    why = b.skip_before_call(kind, 1e6)                      # 5 s > 2 x 2 s
    assert why and "~5 s" in why and "janus_nar/iwslt" in why
    assert b.skip_before_call(kind, 0.7e6) is None           # 3.5 s < 2 x 2 s: try it
    assert b.observe(kind, 0.7e6, 3.5, "janus_nar/medium")   # over: one call only
    assert b.skip_before_call(("sdpa_dense", "bf16", "fwd+bwd"), 1e9) is None  # per kind
    off = CallBudget(limit_s=0.0)
    assert not off.observe(kind, 1.0, 100.0, "x") and off.skip_before_call(kind, 1e9) is None
    c = CallBudget(limit_s=2.0, compile_limit_s=10.0)
    c.add_compile(6.0)
    assert c.skip_compile() is None
    c.add_compile(6.0)
    assert "12 s" in c.skip_compile()
    assert CallBudget(1.0).skip_compile() is None            # no compile limit by default
    assert PREDICT_MARGIN >= 1.0


def test_timing_loop_stops_after_a_call_over_the_budget():
    import time as _time
    s = Settings.for_mode("quick", threads=1, repeats=4, min_repeats=3, budget_s=100.0)
    s.call_budget_s = 0.01
    t = time_interleaved({"slow": lambda: _time.sleep(0.02), "fast": lambda: None}, s, warmup=0)
    assert t["slow"].repeats == 1 and t["slow"].timeboxed
    assert t["fast"].repeats == 4 and not t["fast"].timeboxed
    s.call_budget_s = 0.0
    assert time_interleaved({"slow": lambda: _time.sleep(0.02)}, s, warmup=0)["slow"].repeats == 4


def _tiny_case():
    return batt.make_case("janus_nar", batt.Shape("t", 2, 12), torch.Generator().manual_seed(0),
                          "cpu")


def _prepare(contender, case, budget, pass_="fwd"):
    tensors = batt.case_inputs(case, torch.float32, torch.Generator().manual_seed(1), "cpu")
    s = Settings.for_mode("quick", threads=1)
    return batt._prepare(contender, case, torch.float32, pass_, tensors, None, None, s, budget)


def test_attention_baseline_over_the_call_budget_is_measured_once_then_skipped():
    import time as _time
    case = _tiny_case()
    slow = batt.Contender("eager_dense", lambda q, k, v: (_time.sleep(0.03), q)[1])
    budget = CallBudget(limit_s=0.01)
    row, fn = _prepare(slow, case, budget)
    assert fn is None and row["status"] == "ok" and row["timeboxed"] and row["repeats"] == 1
    assert row["ms"] >= 30 and "time-boxed" in row["note"]
    # the next pass of the same kind is 2x the work: predicted over 2 x budget, not called
    calls = []
    again = batt.Contender("eager_dense", lambda q, k, v: calls.append(1) or q)
    row, fn = _prepare(again, case, budget)
    assert fn is None and row["status"] == "skipped" and not calls
    assert row["predicted_s"] > PREDICT_MARGIN * budget.limit_s and "predicted" in row["note"]
    # ours is never time-boxed
    row, fn = _prepare(batt.Contender("ours:x", lambda q, k, v: (_time.sleep(0.03), q)[1]),
                       case, budget)
    assert fn is not None and row["status"] == "ok" and not row.get("timeboxed")


def test_failing_contender_records_its_error_everywhere():
    def boom(q, k, v):
        raise RuntimeError("BFloat16 Brgemm VNNI format is only supported with amx")
    row, fn = _prepare(batt.Contender("ours:cpu", boom), _tiny_case(), CallBudget(0.0))
    assert fn is None and row["status"] == "failed"
    assert "BFloat16 Brgemm VNNI" in row["note"]
    assert "BFloat16 Brgemm VNNI" in progress_cell(row)
    assert report._cell(row) == "fail: RuntimeError"
    assert report._cell({"status": "failed"}) == "fail (no message recorded)"
    assert report._cell({"status": "ok", "ms": 24100.0, "vs_ours": 300.0, "timeboxed": True,
                         "contender": "eager_dense"}, "ours:cpu") == "24100 (300x, 1 call)"
    assert report._cell({"status": "skipped", "predicted_s": 24.2}) == "skip (~24.2 s/call)"
    assert "~24.2 s/call predicted" in progress_cell({"status": "skipped", "predicted_s": 24.2,
                                                      "contender": "eager_dense"})


def test_report_machine_section_names_the_selected_peak_and_missing_ones():
    data = {"meta": {"cpu": "AMD EPYC 7B12", "isa": {"ours_level": "avx2",
                                                     "ours_why": "the CPU's best",
                                                     "aten_cpu_capability": "AVX2"}},
            "machine": {"isa_level": "avx2", "gemm_fp32_gflops": 85.6, "gemm_fp32_n": 2048,
                        "fma_fp32_gflops": 150.0, "brgemm_qk_fp32_gflops": 110.0,
                        "brgemm_pv_fp32_gflops": 104.0, "brgemm_qk_bf16_gflops": None,
                        "brgemm_pv_bf16_gflops": None,
                        "na": {"brgemm_qk_bf16_gflops": "level avx2 widens bf16 tiles",
                               "brgemm_pv_bf16_gflops": "level avx2 widens bf16 tiles"},
                        "peak_fp32_gflops": 150.0, "peak_fp32_source": "FMA loop (avx2)",
                        "peak_bf16_gflops": 150.0,
                        "peak_bf16_source": "fp32 peak, widened (FMA loop (avx2))"},
            "suites": {}}
    rows = [{"case": "janus_nar", "shape": "long512", "B": 8, "Nmax": 512, "Lq": 9, "Lk": 9,
             "dtype": dt, "pass": "fwd+bwd", "contender": c, "status": "ok", "ms": ms,
             "vs_ours": v} for dt in ("fp32", "bf16")
            for c, ms, v in (("ours:cpu", 10.0, 1.0), ("sdpa_dense", 36.8, 3.68))]
    data["suites"] = {"attention": {"rows": rows, "notes": [], "skipped": []}}
    md = report.render(data, None)
    assert ("Headline: janus_nar fwd+bwd at B=8 / Nmax=512, ours vs SDPA + dense mask "
            "(sdpa time / ours): fp32 **3.68x**, bf16 **3.68x**.") in md
    assert md.split("## Attention", 1)[1].split("\n")[2].startswith("CPU: AMD EPYC 7B12")
    section = md.split("## Machine peaks", 1)[1]
    assert "CPU: AMD EPYC 7B12; ours: ISA level **avx2**" in section
    assert "**150 GFLOP/s** from FMA loop (avx2)" in section
    assert "110 / 104 GFLOP/s" in section
    assert "n/a (level avx2 widens bf16 tiles)" in section


@pytest.mark.skipif(not jk._ext.available(), reason="needs the compiled extension")
def test_isa_avx2_run_bf16_attention_never_fails(tmp_path):
    """`--isa avx2` end to end: the subprocess runs with every cap set, the results are
    labelled with the level, and ours computes bf16 attention there (issue 12)."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for k in bisa.CAP_VARS:
        env.pop(k, None)
    r = subprocess.run([sys.executable, "-m", "benchmarks", "--isa", "avx2", "--quick",
                        "--threads", "1", "--only", "attention", "--families", "janus_nar",
                        "--dtypes", "bf16", "--out", str(tmp_path)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    if r.returncode == 2 and "cannot run avx2" in r.stderr:
        pytest.skip("this CPU has no AVX2 level")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    data = json.loads((tmp_path / "results.json").read_text())
    isa = data["meta"]["isa"]
    assert isa["requested"] == "avx2" and isa["caps"] == {
        k: v for k, v in bisa.cap_env("avx2", {}).items() if k in bisa.CAP_VARS}
    assert isa["aten_cpu_capability"] == "AVX2"
    if "ours_why" in isa:                                 # a build with per-ISA modules
        assert isa["ours_level"] == "avx2"
        assert data["machine"]["isa_level"] == "avx2"
    ours = [x for x in data["suites"]["attention"]["rows"] if x["contender"].startswith("ours")]
    assert ours and all(x["status"] == "ok" for x in ours), ours
    assert "[" in r.stderr and "janus_nar/tiny bf16 fwd" in r.stderr   # progress on stderr
