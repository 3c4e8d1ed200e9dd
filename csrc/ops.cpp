// Op schemas of the `janus` namespace (always compiled) and the Python module entry point.
// The CUDA kernels register with TORCH_LIBRARY_IMPL(janus, CUDA, m) in their own files; the
// CPU kernels live in the per-ISA modules (csrc/cpu, namespaces janus_avx2 / janus_avx512 /
// janus_amx) and janus_kernels/backends/cpu.py registers the `janus` CPU entries, which
// forward to the level in use.
#include <Python.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <string>

#include <ATen/native/CPUBlas.h>

#include "janus/op_schemas.h"

namespace {

// Compiled without ISA flags (it must load on any x86-64 CPU): the kernels live in the per-ISA
// modules janus_kernels._cpu_<isa> (csrc/cpu, see setup.py).
std::string build_info() {
  std::string s = "cpu";
#if defined(_OPENMP)
  s += "+openmp";
#endif
#if defined(JANUS_WITH_CUDA)
  s += ";cuda[" JANUS_CUDA_ARCHS "]";   // the architectures with a kernel image (setup.py)
#endif
  return s;
}

// What this CPU can run, as torch's cpuinfo / libgcc report it at run time (OS support for
// the wider register state included): space-separated feature names. "amx_bf16_brgemm"
// means oneDNN's bf16 brgemm ukernel works here (AMX tiles, enabled by the OS).
std::string cpu_features() {
  std::string s;
#if defined(__x86_64__) || defined(_M_X64)
  __builtin_cpu_init();
  auto add = [&](bool on, const char* name) {
    if (on) s += std::string(s.empty() ? "" : " ") + name;
  };
  add(__builtin_cpu_supports("avx2"), "avx2");
  add(__builtin_cpu_supports("fma"), "fma");
  add(__builtin_cpu_supports("avx512f"), "avx512f");
  add(__builtin_cpu_supports("avx512bw"), "avx512bw");
  add(__builtin_cpu_supports("avx512vl"), "avx512vl");
  add(__builtin_cpu_supports("avx512dq"), "avx512dq");
  add(at::native::cpublas::could_pack(at::kBFloat16), "amx_bf16_brgemm");
#endif
  return s;
}

}  // namespace

TORCH_LIBRARY(janus, m) {
  janus::define_kernel_ops(m);
  m.def("build_info() -> str", &build_info);
  m.def("cpu_features() -> str", &cpu_features);
}

// A plain CPython module so `import janus_kernels._C` loads the library (and with it the
// registrations above); no pybind11 needed.
static PyModuleDef janus_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&janus_module); }
