"""benchmarks/gpu_check: its sizes meet what a GPU validation must cover, the report names the
device and lists every result, and checks run end to end on CPU (tiny shapes). The full dry
run is `make gpu-check-dry`."""
import os

import pytest
import torch

import janus_kernels as jk
from benchmarks.gpu_check import checks, config, report, timing

pytestmark = [pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                 reason="the CPU checks use the Triton interpreter"),
              pytest.mark.filterwarnings("ignore::RuntimeWarning")]  # numpy in the interpreter


def test_real_sizes_cover_the_gpu_only_failure_modes():
    s = config.make_setup(dry=False)
    B, H, _ = s.grid
    assert B * H > 65535                          # past grid.y's limit
    H_big, L_big, d_big, window = s.big
    assert H_big * L_big * d_big >= 2 ** 31       # int64 offsets
    assert window * 64 < L_big                    # a sliding window keeps the compute small
    assert s.L >= 1024 and s.stream_L == 2048 and s.device == "cuda"
    names = [name for name, *_ in timing.shapes(s)]
    assert any("causal" in n and "L2048" in n for n in names)
    assert any("B64 N30" in n for n in names) and any("B8 N512" in n for n in names)


def test_dry_sizes_are_tiny():
    s = config.make_setup(dry=True)
    assert s.device == "cpu" and s.L <= 32 and s.grid[0] * s.grid[1] < 100


def test_backends_come_from_the_package():
    got = config.attention_backends("cpu")
    assert "reference" not in got
    assert set(got) <= set(jk.available_backends("cpu"))


@pytest.mark.parametrize("check", [checks.grid_limit, checks.big_tensor, checks.losses,
                                   checks.side_stream])
def test_checks_pass_on_cpu(check):
    results = list(check(config.make_setup(dry=True)))
    assert results
    for name, ok, detail in results:
        assert ok is not False, f"{name}: {detail}"


def test_report_names_the_device_and_every_result():
    rec = report.Recorder()
    rec.add(report.Result("check", "a", "pass", "fine"))
    rec.add(report.Result("check", "b", "fail", "x | y"))
    rec.add_timing(report.Timing("causal", "sdpa", 1.25, None))
    text = report.markdown(rec, "cpu", dry=True, build_info="cpu")
    assert "CPU only" in text and "1 failed" in text and "| check | b | fail | x / y |" in text
    assert "| causal | sdpa | 1.250 | - |" in text
    assert [r.name for r in rec.failed] == ["b"]


def test_dense_reference_matches_masked_softmax():
    m = jk.causal_mask([5, 3], 5)
    q, k, v = (torch.randn(2, 2, 5, 8) for _ in range(3))
    ref = checks.dense_reference(q, k, v, m)
    from janus_kernels.reference import reference_attention
    want = reference_attention(q, k, v, m.materialize(), scale=8 ** -0.5)
    assert torch.allclose(ref, want.float(), atol=1e-5)


def test_time_boxes_skip_instead_of_running_over():
    from benchmarks.gpu_check.__main__ import _checks
    s = config.make_setup(dry=True)
    rec = report.Recorder()
    _checks(rec, s, deadline=-1.0)
    assert [r.status for r in rec.results] == ["skip"] * len(checks.ALL)
    timing.run(s, rec, deadline=-1.0)
    assert rec.timings and all(t.fwd_ms is None and "time budget" in t.note
                               for t in rec.timings)
