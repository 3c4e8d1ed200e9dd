"""Mutation check of the emulated CUDA suite (run by hand, not by pytest): inject one bug at a
time into csrc/cuda/ (a dropped barrier or cp.async wait, a wrong fragment register, a wrong
ldmatrix address, a missing guard, ...), run tests/test_cuda_emu.py's numeric suite under both
thread schedules and report whether the suite fails. Sources are restored after each run.

    python tests/cuda_emu/mutation_check.py [index ...]     (~40 s per mutation on 2 cores)
"""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FWD, BWD = "csrc/cuda/attention_fwd.cu", "csrc/cuda/attention_bwd.cu"
COMMON = "csrc/cuda/attention_common.cuh"

# (what, file, original text, mutated text)
MUTS = [
    ('fwd: drop barrier before K(next) overwrites sK', FWD,
     '    __syncthreads();   // every warp is done with sK: K(next) may overwrite it\n',
     ''),
    ('fwd: drop barrier after P V (before V(next))', FWD,
     '    __syncthreads();   // every warp is done with sV before V(next) overwrites it\n',
     ''),
    ('fwd: drop cp.async wait before P V', FWD,
     '    ptx::cp_async_wait<1>();   // V(n) landed',
     '    // wait dropped'),
    ('bwd: drop barrier after dS store', BWD,
     '      __syncthreads();   // the whole dS tile is in shared memory\n',
     ''),
    ('common: swap A fragment regs a1/a2 in acc_to_a', COMMON,
     '    a[k][1] = ptx::pack2<T>(s[2 * k][2], s[2 * k][3]);\n'
     '    a[k][2] = ptx::pack2<T>(s[2 * k + 1][0], s[2 * k + 1][1]);',
     '    a[k][2] = ptx::pack2<T>(s[2 * k][2], s[2 * k][3]);\n'
     '    a[k][1] = ptx::pack2<T>(s[2 * k + 1][0], s[2 * k + 1][1]);'),
    ('common: swap b0/b1 registers in warp_gemm_rb', COMMON,
     '      const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};\n'
     '      ptx::mma<T>(acc[2 * np], a[kk], b0);',
     '      const uint32_t b0[2] = {b[1], b[0]}, b1[2] = {b[2], b[3]};\n'
     '      ptx::mma<T>(acc[2 * np], a[kk], b0);'),
    ('common: ldmatrix lane row (lane & 7) -> (lane & 3) for B^T', COMMON,
     '(np * 16 + (lane >> 4) * 8 + (lane & 7)) * PB',
     '(np * 16 + (lane >> 4) * 8 + (lane & 3)) * PB'),
    ('common: quad_max without the xor-2 step', COMMON,
     '  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));',
     '  return x;'),
    ('fwd: no -inf guard on the running max', FWD,
     'm_use[r] = m_new == -INFINITY ? 0.f : m_new;',
     'm_use[r] = m_new;'),
    ('fwd: dropout word j&3 -> always word 0', FWD,
     'const uint32_t u0 = (j & 2) ? w.w[2] : w.w[0], u1 = (j & 2) ? w.w[3] : w.w[1];',
     'const uint32_t u0 = w.w[0], u1 = (j & 2) ? w.w[3] : w.w[1];'),
    ('fwd: FULL-tile shortcut also past Lk (the bug found)', FWD,
     'const bool partial = j0 + BN > p.Lk ||',
     'const bool partial = false &&'),
    ('bwd: treat every live tile as FULL (no predicate)', BWD,
     '      const bool partial = cls != TILE_FULL;',
     '      const bool partial = false;'),
    ('common: ldmatrix.trans -> ldmatrix in warp_gemm_rb', COMMON,
     '      ptx::ldmatrix_x4_trans(b, sB + (kk * 16',
     '      ptx::ldmatrix_x4(b, sB + (kk * 16'),
    ('bwd: dV from P without dropout', BWD,
     '            pd[nt][e] = ((keep >> (4 * nt + e)) & 1u) ? pt[nt][e] * inv_keep : 0.f;',
     '            pd[nt][e] = pt[nt][e];'),
    ('fwd: no rescale of O by alpha', FWD,
     '      for (int e = 0; e < 4; ++e) acc[nt][e] *= alpha[e >> 1];',
     '      for (int e = 0; e < 4; ++e) {}'),
    ('bwd: GQA head group off by one', BWD,
     '  for (int h = hk * group; h < (hk + 1) * group; ++h) {',
     '  for (int h = hk * group; h < (hk + 1) * group - (group > 1); ++h) {'),
    ('bwd: drop barrier after the Q/dO tile wait', BWD,
     '      ptx::cp_async_wait<0>();\n      __syncthreads();\n',
     '      ptx::cp_async_wait<0>();\n'),
    ('fwd: drop barrier after the K(n) wait', FWD,
     '    ptx::cp_async_wait<1>();\n    __syncthreads();\n\n    float s[NT_S][4];',
     '    ptx::cp_async_wait<1>();\n\n    float s[NT_S][4];'),
]


def run(idx: int) -> None:
    name, f, old, new = MUTS[idx]
    path = os.path.join(ROOT, f)
    src = open(path).read()
    assert src.count(old) == 1, f"mutation {idx} no longer applies: {name}"
    open(path, "w").write(src.replace(old, new))
    try:
        print(f"[{idx}] {name}", flush=True)
        for sched in ("fwd_lazy", "rev_eager"):
            r = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                 "-o", "addopts=", "tests/test_cuda_emu.py",
                 "-k", f"test_attention_matches_reference and {sched}"],
                cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
            out = [ln for ln in r.stdout.splitlines() if ln.strip()]
            last = out[-1] if out else r.stderr[-200:]
            verdict = "CAUGHT" if r.returncode else "missed"
            print(f"   {sched}: {verdict} | {last[:90]}", flush=True)
    finally:
        open(path, "w").write(src)


if __name__ == "__main__":
    for i in [int(x) for x in sys.argv[1:]] or range(len(MUTS)):
        run(i)
