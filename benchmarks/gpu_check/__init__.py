"""`make gpu-check`: validate a one-GPU machine in minutes, and `make gpu-check-dry`: the same
checks on CPU with tiny shapes (Triton interpreter, CPU kernels, CUDA kernels under the CPU
emulation in the pytest phase).

Phases, each time-boxed (the whole run fits 8 minutes on one H200 after the build):
  1. pytest: the GPU tests with compiled Triton at real sizes (dry: interpreter/emulation tests);
  2. checks (checks.py): real-size correctness of every attention backend, B*H > 65535,
     a >= 2^31-element tensor, a side stream, bitwise determinism, torch.compile fwd+bwd on
     the (B, L, H, d).transpose(1, 2) layout, opcheck, the loss ops against the CPU ops;
  3. timings (timing.py): causal L=2048 and the JANUS NAR/AUX mask (B=64, N=30; B=8, N=512),
     fwd and fwd+bwd, against SDPA and compiled FlexAttention;
  4. a markdown report naming the GPU (report.py).

    python -m benchmarks.gpu_check [--dry] [--report PATH] [--budget-s SECONDS]
"""
