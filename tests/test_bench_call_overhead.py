"""Smoke run of benchmarks/call_overhead.py: both cases timed for the public call, the raw
kernel and SDPA, with the Python share derived from the first two."""
import pytest

from benchmarks import call_overhead
from benchmarks.common import Settings
from janus_kernels import _ext


@pytest.mark.skipif(not _ext.available(), reason="compiled extension missing")
def test_call_overhead_quick():
    settings = Settings.for_mode("quick", threads=1, call_budget_s=0.0)
    rows = call_overhead.run(settings)
    assert len(rows) == 2
    for r in rows:
        assert all(r[k] > 0 for k in ("janus", "kernel", "sdpa")), r
        assert r["python"] == pytest.approx(r["janus"] - r["kernel"])
