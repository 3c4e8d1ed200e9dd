"""Smoke run of benchmarks/dropout.py: every (shape, dtype, pass) row times both contenders,
with the ratio, and nothing fails."""
from benchmarks import dropout
from benchmarks.common import Settings


def test_quick_run_times_every_row():
    settings = Settings.for_mode("quick", threads=1, call_budget_s=0.0)
    res = dropout.run(settings, "quick")
    assert len(res["rows"]) == len(dropout.SHAPES["quick"]) * len(dropout.DTYPES) * 2
    for r in res["rows"]:
        assert "note" not in r, r
        assert r["janus"] > 0 and r["torch"] > 0 and r["x_torch"] > 0 and r["gb_s"] > 0
    assert "janus backend cpu" in res["notes"][0]
