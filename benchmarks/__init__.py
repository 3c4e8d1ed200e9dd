"""Benchmark suite for janus-kernels: fused structured-mask attention, fused JANUS losses and
whole JANUS training steps, each against the dense / eager / compiled baselines.

    python -m benchmarks                 # standard set (a few minutes on 2 CPU cores)
    python -m benchmarks --quick         # CI-sized smoke run (< ~60 s)
    python -m benchmarks --full          # everything, long sequences included
    python -m benchmarks.report results.json   # results JSON -> BENCHMARKS.md tables

Every run measures the machine's own peaks (GEMM, exp, memory bandwidth) first, so the
kernels' throughput is reported as a fraction of what this machine can do in the same run.
"""
