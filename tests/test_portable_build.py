"""The default build runs on CPUs older than the build machine.

The extension is compiled without -march=native: the generic janus_kernels._C plus one CPU
kernel module per ISA level, imported only when the CPU has that level (janus_kernels/
cpu_isa.py). This is checked by running every op and dtype (tests/portable_smoke.py) under
``qemu-x86_64 -cpu Haswell`` -- AVX2 + FMA, no AVX-512, and an illegal-instruction trap on any
AVX-512 instruction -- with the very build under test. Needs Debian's qemu-user (.ci/run
installs it; skipped without it). Also: the levels below the machine's own run in-process
through the ISA cap, in the main suites (conftest.cpu_isa_level).
"""
import os
import shutil
import subprocess
import sys

import pytest

from janus_kernels import _ext, cpu_isa

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QEMU = shutil.which("qemu-x86_64") or shutil.which("qemu-x86_64-static")


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="2")
    env.pop(cpu_isa.ENV_CAP, None)
    env.update(extra)
    return env


@pytest.mark.skipif(not _ext.available(), reason="compiled extension missing")
@pytest.mark.parametrize("level", cpu_isa.LEVELS)
def test_every_op_runs_at_each_level_in_a_fresh_process(level):
    """JANUS_CPU_ISA caps the level for a whole process (the in-process cap is tested by the
    suites); levels this machine lacks are skipped."""
    if level not in cpu_isa.available_levels():
        pytest.skip(f"this machine cannot run {level}")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "portable_smoke.py"), level],
                       env=_env(JANUS_CPU_ISA=level), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "every op and dtype ok" in r.stdout


@pytest.mark.slow
@pytest.mark.skipif(QEMU is None, reason="qemu-user not installed (apt-get install qemu-user)")
@pytest.mark.skipif(not _ext.available(), reason="compiled extension missing")
def test_default_build_runs_on_an_avx2_only_cpu():
    r = subprocess.run([QEMU, "-cpu", "Haswell", sys.executable,
                        os.path.join(ROOT, "tests", "portable_smoke.py"), "avx2"],
                       env=_env(), capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert "every op and dtype ok at level avx2" in r.stdout
