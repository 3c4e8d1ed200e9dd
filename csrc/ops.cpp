// Op schemas of the `janus` namespace (always compiled) and the Python module entry point.
// Backends register implementations with TORCH_LIBRARY_IMPL(janus, CPU|CUDA, m) in their own
// files; other op families add schemas with TORCH_LIBRARY_FRAGMENT(janus, m).
#include <Python.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <string>

namespace {

std::string build_info() {
  std::string s = "cpu";
#if defined(CPU_CAPABILITY_AVX512)
  s += "+avx512";
#elif defined(CPU_CAPABILITY_AVX2)
  s += "+avx2";
#endif
#if defined(_OPENMP)
  s += "+openmp";
#endif
#if defined(JANUS_WITH_CUDA)
  s += ";cuda";
#endif
  return s;
}

}  // namespace

TORCH_LIBRARY(janus, m) {
  // Structured-mask flash attention. q (B, H, Lq, d), k/v (B, Hkv, Lk, d), mask_params
  // (B, NUM_FIELDS) int32 (see csrc/include/janus/mask.h), mask_rank (B, Lk) int32 for the
  // permutation kind. rng_seed: int64 tensor of shape (1,) when dropout_p > 0.
  // Returns out (B, H, Lq, d) in q's dtype and lse (B, H, Lq) float32 (-inf for rows that
  // see no key; their output is 0).
  m.def("flash_attention_fwd(Tensor q, Tensor k, Tensor v, Tensor mask_params, "
        "Tensor? mask_rank, int q_split, int mask_kind, float scale, float dropout_p, "
        "Tensor? rng_seed) -> (Tensor, Tensor)");
  m.def("flash_attention_bwd(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, "
        "Tensor lse, Tensor mask_params, Tensor? mask_rank, int q_split, int mask_kind, "
        "float scale, float dropout_p, Tensor? rng_seed) -> (Tensor, Tensor, Tensor)");
  m.def("build_info() -> str", &build_info);
}

// A plain CPython module so `import janus_kernels._C` loads the library (and with it the
// registrations above); no pybind11 needed.
static PyModuleDef janus_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&janus_module); }
