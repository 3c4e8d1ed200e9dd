"""The backend contract (janus_kernels/backends): dispatch derived from the declarations, clear
errors for a backend that cannot serve a call, CPU ISA levels and their cap, and the CUDA
architecture checks (with a simulated device: no GPU is needed)."""
import os
import sys

import pytest
import torch

import janus_kernels as jk
from janus_kernels import _ext, backends, cpu_isa
from janus_kernels.backends import cuda as cuda_backend

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import build_config  # noqa: E402

needs_ext = pytest.mark.skipif(not _ext.available(), reason="compiled extension missing")
F32, BF16, F16, F64 = torch.float32, torch.bfloat16, torch.float16, torch.float64


@needs_ext
@pytest.mark.parametrize("op,dtype,expected", [
    ("attention", F32, "cpu"), ("attention", BF16, "cpu"), ("attention", F16, "cpu"),
    ("attention", F64, "reference"),        # the compiled kernels do not compute fp64
    ("symmetric_kl", F64, "cpu"), ("cross_entropy", BF16, "cpu"), ("janus_rows", F16, "cpu"),
])
def test_cpu_defaults_follow_the_declarations(op, dtype, expected):
    hd = 64 if op == "attention" else None
    assert jk.default_backend(op, "cpu", dtype, hd) == expected


def test_every_default_can_serve_its_call():
    for op in backends.OPS:
        for dt in (F32, BF16, F16, F64):
            name = backends.default_backend(op, "cpu", dt, 64 if op == "attention" else None)
            assert backends.why_not(op, name, "cpu", dt) is None


@needs_ext
def test_explicit_backend_that_cannot_serve_raises_naming_op_backend_device_reason():
    mask = jk.causal_mask([3], 3)
    q = torch.randn(1, 1, 3, 8, dtype=F64)
    with pytest.raises(jk.BackendError, match=r"'cpu'.*attention.*cpu.*float64"):
        jk.attention(q, q, q, mask, backend="cpu")
    with pytest.raises(jk.BackendError, match=r"'cuda'.*attention on cpu"):
        jk.attention(q.float(), q.float(), q.float(), mask, backend="cuda")
    with pytest.raises(jk.BackendError, match=r"'reference'.*janus_rows"):
        backends.resolve("janus_rows", "reference", torch.device("cpu"), F32, None, "who")


@pytest.mark.parametrize("bad", ["", "CPU", "cpp2"])
def test_unknown_backend_names_raise(bad):
    mask = jk.causal_mask([3], 3)
    q = torch.randn(1, 1, 3, 8)
    with pytest.raises(ValueError, match="backend must be one of"):
        jk.attention(q, q, q, mask, backend=bad)
    with pytest.raises(ValueError, match="backend must be one of"):
        jk.symmetric_kl(q, q, backend=bad)


@needs_ext
def test_cpp_alias_maps_to_the_compiled_backend_of_the_device():
    assert backends.resolve("attention", "cpp", torch.device("cpu"), F32, 8, "t") == "cpu"


# ------------------------------------------------------------------------- CPU ISA levels
@needs_ext
def test_isa_levels_are_ordered_and_capped(monkeypatch):
    levels = cpu_isa.available_levels()
    assert levels and levels[0] == "avx2", "every x86-64 build has the avx2 level"
    assert levels == list(cpu_isa.LEVELS[:len(levels)])
    for lv in levels:
        with cpu_isa.cap_cpu_isa(lv):
            assert cpu_isa.active_level() == lv
        monkeypatch.setenv(cpu_isa.ENV_CAP, lv)
        assert cpu_isa.active_level() == lv
        assert lv in cpu_isa.describe()
    monkeypatch.setenv(cpu_isa.ENV_CAP, "sse9")
    with pytest.raises(ValueError, match="JANUS_CPU_ISA"):
        cpu_isa.active_level()


@needs_ext
def test_cap_above_the_machine_is_refused():
    missing = [lv for lv in cpu_isa.LEVELS if lv not in cpu_isa.available_levels()]
    for lv in missing:
        with pytest.raises(ValueError, match="cannot run"):
            with cpu_isa.cap_cpu_isa(lv):
                pass
    with pytest.raises(ValueError, match="level must be one of"):
        with cpu_isa.cap_cpu_isa("avx1024"):
            pass


@needs_ext
@pytest.mark.parametrize("level", cpu_isa.LEVELS)
def test_each_level_runs_its_own_module(level):
    if level not in cpu_isa.available_levels():
        pytest.skip(f"this machine cannot run {level}")
    expected = {"avx2": "avx2", "avx512": "avx512", "amx": "avx512"}[level]
    assert cpu_isa.level_ops(level).isa_info() == expected


@needs_ext
def test_raw_janus_cpu_entries_forward_to_the_active_level():
    x = torch.randn(3, 7)
    t = torch.tensor([1, 2, 3])
    a = torch.ops.janus.ce_rows_fwd(x, t, 0.1, -100)
    b = cpu_isa.level_ops("avx2").ce_rows_fwd(x, t, 0.1, -100)
    torch.testing.assert_close(a[0], b[0], rtol=1e-6, atol=1e-6)


@needs_ext
def test_machine_peak_ops_report_positive_rates():
    ops = cpu_isa.level_ops()
    assert ops.fma_peak_gflops(1000) > 0
    assert ops.brgemm_tile_gflops(16, 32, 16, False, 10) > 0
    with pytest.raises(RuntimeError, match="M, N, K"):
        ops.brgemm_tile_gflops(0, 32, 16, False, 10)


# -------------------------------------------------------------------------- CUDA archs
ARCHS = [(8, 0, False), (8, 6, False), (9, 0, True)]


@pytest.mark.parametrize("cap,runs", [
    ((7, 0), False), ((7, 5), False),           # V100, T4: no image, the kernels need sm_80
    ((8, 0), True), ((8, 6), True), ((8, 9), True),   # sm_86 cubin runs on sm_89
    ((9, 0), True), ((10, 0), True), ((12, 0), True),  # newer majors JIT the compute_90 PTX
])
def test_arch_runs(cap, runs):
    assert cuda_backend.arch_runs(cap, ARCHS) is runs
    assert cuda_backend.arch_runs(cap, [(8, 0, False)]) is (cap[0] == 8)


def test_default_never_picks_cuda_kernels_a_t4_cannot_run(monkeypatch):
    """A T4 (sm_75) with an extension built for sm_80/86/90: the default must not be "cuda"
    (today's failure: "no kernel image is available"); asking for it explains why."""
    monkeypatch.setattr(_ext, "has_cuda_kernels", lambda: True)
    monkeypatch.setattr(_ext, "build_info", lambda: "cpu+openmp;cuda[80,86,90+ptx]")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "Tesla T4")
    dev = torch.device("cuda", 0)
    for dt in (F16, BF16):
        assert jk.default_backend("attention", dev, dt, 64) != "cuda"
        reason = backends.why_not("attention", "cuda", dev, dt, 64)
        assert "sm_75" in reason and "sm_80" in reason
    # and an H100 is served
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (9, 0))
    assert jk.default_backend("attention", dev, F16, 64) == "cuda"
    assert jk.default_backend("attention", dev, F16, 60) != "cuda"   # head dim not % 8


@pytest.mark.parametrize("env,expected", [
    ("", build_config.DEFAULT_ARCHS),
    ("8.0;9.0+PTX", [(8, 0, False), (9, 0, True)]),
    ("8.6 8.9", [(8, 6, False), (8, 9, False)]),
    ("Hopper+PTX", [(9, 0, True)]),
])
def test_torch_cuda_arch_list_is_honoured(env, expected):
    assert build_config.cuda_archs(env) == expected


def test_arch_list_below_sm80_is_dropped_with_a_warning():
    with pytest.warns(UserWarning, match="7.5"):
        assert build_config.cuda_archs("7.5;8.0") == [(8, 0, False)]
    with pytest.raises(RuntimeError, match=">= 8.0"):
        build_config.cuda_archs("7.0")
    flags = build_config.gencode_flags([(9, 0, True)])
    assert flags == ["-gencode", "arch=compute_90,code=sm_90",
                     "-gencode", "arch=compute_90,code=compute_90"]



def test_import_registers_the_raw_cpu_ops():
    """`import janus_kernels` alone makes torch.ops.janus.<kernel op> callable on CPU tensors
    (they were registered only once some backend was looked up, so a script or test calling
    the raw ops first failed with "Could not run ... with arguments from the 'CPU' backend").
    A fresh interpreter, since this one has long looked backends up."""
    import subprocess
    import sys
    code = ("import torch, janus_kernels\n"
            "ops = ('flash_attention_fwd', 'symkl_rows_fwd', 'ce_rows_fwd', 'janus_rows_fwd')\n"
            "print([op for op in ops if not torch._C._dispatch_has_kernel_for_dispatch_key("
            "'janus::' + op, 'CPU')])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_remembered_cpu_choice_follows_the_environment(monkeypatch):
    """resolve() remembers its CPU answers (the per-call Python cost of working them out
    rivalled a decoding step's kernel); what they depend on in the environment is part of
    the key, so switching Triton's interpreter on and off changes the answer both ways."""
    pytest.importorskip("triton")
    cpu = torch.device("cpu")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    for _ in range(2):   # the second call is served from memory
        with pytest.raises(jk.BackendError, match="TRITON_INTERPRET"):
            backends.resolve("attention", "triton", cpu, F32, 8, "t")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    for _ in range(2):
        assert backends.resolve("attention", "triton", cpu, F32, 8, "t") == "triton"
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(jk.BackendError, match="TRITON_INTERPRET"):
        backends.resolve("attention", "triton", cpu, F32, 8, "t")
    assert backends.resolve("attention", None, cpu, F32, 8, "t") == jk.default_backend(
        "attention", cpu, F32, 8)


@needs_ext
def test_inference_call_builds_no_graph_and_matches_the_autograd_path():
    """Without gradients (no_grad, or no input requiring them) attention() calls the kernel
    directly: the same numbers as the autograd path, and no graph node."""
    mask = jk.janus_nar_mask([3, 5], [2, 3])
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 2, mask.q_len, 16, generator=g)
    k = torch.randn(2, 2, mask.kv_len, 16, generator=g)
    v = torch.randn(2, 2, mask.kv_len, 16, generator=g)
    with_grad = jk.attention(q.requires_grad_(), k, v, mask)
    assert with_grad.grad_fn is not None
    with torch.no_grad():
        plain = jk.attention(q, k, v, mask)
    assert plain.grad_fn is None and not plain.requires_grad
    torch.testing.assert_close(plain, with_grad.detach(), rtol=0, atol=0)
    o, lse = jk.attention(q.detach(), k, v, mask, return_lse=True)
    assert o.grad_fn is None and lse.grad_fn is None
    torch.testing.assert_close(o, plain, rtol=0, atol=0)
