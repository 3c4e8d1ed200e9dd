"""AOT compile check of the Triton attention kernels for sm_80 and sm_90 without a GPU.

Runs ``python -m janus_kernels.triton.aot`` in a subprocess with TRITON_INTERPRET=0 (the
interpreter and the compiler cannot share a process) and checks every shipped config:
a cubin exists, shared memory fits the architecture, no register spills (stack frame 0),
the 16-bit kernels use tensor cores (mma.sync on sm_80, wgmma on sm_90), the fp32 ones do
not by default (IEEE fp32 products) and do, with tf32 operands, in the TF32 variant (torch's
float32 matmul precision "high"/"medium", attention.use_tf32). The score-modifier variants
(softcap / rel_bias on, ``aot --mods``) are held to the same rules."""
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.compile_check

triton = pytest.importorskip("triton")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the fast GPU dtypes and the accurate fp32 one (IEEE dots on the FMA units, FP32_CONFIGS):
# all are held to the same no-spill rule.
DTYPES = ("fp16", "bf16", "fp32", "tf32")
HEAD_DIMS = (64, 128)
ARCHS = (80, 90)


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    from janus_kernels.triton import aot
    if aot._cuobjdump() is None:
        pytest.skip("no cuobjdump (bundled with triton's NVIDIA backend or on PATH)")
    out = tmp_path_factory.mktemp("aot") / "aot.json"
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_DEFAULT_FP_FUSION="1",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "janus_kernels.triton.aot", "--json", str(out), "--jobs", "2",
           "--dtypes", *DTYPES, "--head-dims", *map(str, HEAD_DIMS),
           "--arch", *map(str, ARCHS), "--mods"]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    if not out.exists():
        raise AssertionError(f"AOT compile failed (rc={proc.returncode}):\n"
                             f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return json.loads(out.read_text())


def test_every_kernel_and_config_compiled(rows):
    from janus_kernels.triton import aot
    want = {(k, dt, d, a, kind, drop, False) for k, dt, d, a, kind, drop
            in aot.variants(DTYPES, HEAD_DIMS, ARCHS)}
    want |= set(aot.mods_variants(DTYPES, HEAD_DIMS, ARCHS))   # softcap / rel_bias kernels
    got = {(r["kernel"], r["dtype"], r["head_dim"], r["arch"], r["kind"], r["dropout"],
            bool(r["mods"])) for r in rows}
    assert got == want
    assert {r["kernel"] for r in rows} == set(aot.KERNELS)


def test_no_spills_and_shared_memory_fits(rows):
    bad = [r for r in rows if r["spill_stack_bytes"] != 0 or r["smem"] > r["smem_limit"]
           or not 0 < r["regs"] <= 255]
    assert not bad, "\n".join(map(str, bad))


def test_tensor_cores_used(rows):
    for r in rows:
        if r["kernel"] == "pre":
            continue
        if r["dtype"] in ("fp16", "bf16"):
            # the modifier kernels' small row tiles (< 64 rows: no warpgroup MMA) take
            # mma.sync on sm_90 too -- still tensor cores
            hopper = ("wgmma", "mma.sync") if r["mods"] else ("wgmma",)
            assert r["mma"] in (hopper if r["arch"] >= 90 else ("mma.sync",)), r
            assert not r["mma_tf32"], r
        elif r["dtype"] == "tf32":  # the backward's small tiles take mma.sync on sm_90 too
            want = ("wgmma",) if r["arch"] >= 90 and r["kernel"] == "fwd" else ("mma.sync",)
            if r["mods"] and r["arch"] >= 90:
                want = ("wgmma", "mma.sync")
            assert r["mma"] in want and r["mma_tf32"], r
        else:  # default fp32 dots are IEEE on the FMA units: TF32 would lose fp32 accuracy
            assert r["mma"] == "none" and not r["mma_tf32"], r
