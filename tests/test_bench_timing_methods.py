"""Smoke run of benchmarks/timing_methods.py: every method times both contenders, and the
ratio column is their quotient."""
import pytest

from benchmarks import timing_methods
from janus_kernels import _ext


@pytest.mark.skipif(not _ext.available(), reason="compiled extension missing")
def test_timing_methods_tiny():
    rows = timing_methods.run("tiny", repeats=2, flush_floats=1 << 16)
    assert [r["method"] for r in rows] == list(timing_methods.METHODS)
    for r in rows:
        assert r["ours ms"] > 0 and r["sdpa_dense ms"] > 0, r
        assert r["sdpa / ours"] == pytest.approx(r["sdpa_dense ms"] / r["ours ms"])
