"""Smoke run of benchmarks/env_ab.py: both variants timed for each pass, the switch restored
afterwards, and a malformed switch refused."""
import os

import pytest

from benchmarks import env_ab
from janus_kernels import _ext

SWITCH = "JANUS_CPU_SMALL_TILES_MAX_KEYS"


@pytest.mark.skipif(not _ext.available(), reason="compiled extension missing")
def test_env_ab_tiny(monkeypatch):
    monkeypatch.setenv(SWITCH, "64")
    rows = env_ab.run(f"{SWITCH}=0", shape="tiny", calls=2)
    assert [r["pass"] for r in rows] == ["fwd", "bwd"]
    for r in rows:
        a, b = r["A ms (unset)"], r[f"B ms ({SWITCH}=0)"]
        assert a > 0 and b > 0 and r["A / B"] == pytest.approx(a / b)
    assert os.environ[SWITCH] == "64"


def test_env_ab_rejects_a_switch_without_value():
    with pytest.raises(ValueError, match="NAME=VALUE"):
        env_ab.run(SWITCH, shape="tiny", calls=1)
