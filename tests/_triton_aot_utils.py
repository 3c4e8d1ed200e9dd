"""Run an ahead-of-time Triton compile script in a subprocess (TRITON_INTERPRET=0, the repo
on PYTHONPATH) and check the resource rows it prints after "RESULT" (a JSON list of dicts
with reg / stack / local / shared): the shared body of the loss-kernel compile checks."""
import json
import os
import subprocess
import sys
from typing import Dict, List

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_aot_script(script: str, expected_rows: int) -> List[Dict]:
    """Skips without triton's compiler or a cuobjdump (bundled with triton's NVIDIA backend or
    on PATH)."""
    pytest.importorskip("triton.compiler")
    from janus_kernels.triton import aot
    if aot._cuobjdump() is None:
        pytest.skip("no cuobjdump (bundled with triton's NVIDIA backend or on PATH)")
    env = dict(os.environ, TRITON_INTERPRET="0", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert len(res) == expected_rows
    print("\n".join(json.dumps(r) for r in res))
    for r in res:
        assert r["stack"] == 0 and r["local"] == 0, f"register spills: {r}"
        assert 0 < r["reg"] <= 255 and r["shared"] <= 160 * 1024, r
    return res
