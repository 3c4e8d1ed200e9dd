"""Smoke run of benchmarks/score_mods.py: every modifier row is timed for janus and the dense
contenders (SDPA only where it can express the modifier), with ratios, and nothing fails."""
from benchmarks import score_mods
from benchmarks.common import Settings


def test_quick_run_times_every_modifier():
    settings = Settings.for_mode("quick", threads=1, call_budget_s=0.0)
    res = score_mods.run(settings, "quick")
    assert [r["mod"] for r in res["rows"]] == list(score_mods.MODS)
    for r in res["rows"]:
        assert "note" not in r, r
        assert r["janus"] > 0 and r["x_eager"] > 0
        assert ("sdpa" in r) == ("softcap" not in r["mod"])
    assert "janus backend cpu" in res["notes"][0]
