// Op registration for one CPU ISA build. setup.py compiles every file of csrc/cpu once per ISA
// level into its own extension module and defines JANUS_ISA_NS, the op namespace of that
// build (janus_avx2, janus_avx512); the AVX-512 build also serves the `janus_amx` namespace,
// whose attention runs bf16 tiles natively with AMX (the kernels are the same code, the
// dispatch flag differs). Python picks the namespace per call (janus_kernels/cpu_isa.py).
#pragma once
#include <torch/library.h>

#ifndef JANUS_ISA_NS
#error "csrc/cpu is compiled once per ISA level: setup.py defines JANUS_ISA_NS"
#endif

// Macro indirection so JANUS_ISA_NS is expanded before TORCH_LIBRARY* paste it into names.
#define JANUS_LIBRARY_IMPL_CPU_(ns, m) TORCH_LIBRARY_IMPL(ns, CPU, m)
#define JANUS_LIBRARY_(ns, m) TORCH_LIBRARY(ns, m)

// JANUS_CPU_KERNELS(reg, reg_amx): reg(m) registers this build's kernels in JANUS_ISA_NS,
// reg_amx(m) in janus_amx (AVX-512 builds only).
#if defined(JANUS_ISA_WITH_AMX)
#define JANUS_CPU_KERNELS(reg, reg_amx)                  \
  JANUS_LIBRARY_IMPL_CPU_(JANUS_ISA_NS, m) { reg(m); }   \
  TORCH_LIBRARY_IMPL(janus_amx, CPU, m) { reg_amx(m); }
#else
#define JANUS_CPU_KERNELS(reg, reg_amx) \
  JANUS_LIBRARY_IMPL_CPU_(JANUS_ISA_NS, m) { reg(m); }
#endif

// JANUS_CPU_SCHEMAS(define): define(m) adds op schemas (with or without kernels) to the
// namespace(s) of this build as a library fragment (files other than attention_glue.cpp,
// which owns the TORCH_LIBRARY block).
#define JANUS_LIBRARY_FRAGMENT_(ns, m) TORCH_LIBRARY_FRAGMENT(ns, m)
#if defined(JANUS_ISA_WITH_AMX)
#define JANUS_CPU_SCHEMAS(define)                      \
  JANUS_LIBRARY_FRAGMENT_(JANUS_ISA_NS, m) { define(m); } \
  TORCH_LIBRARY_FRAGMENT(janus_amx, m) { define(m); }
#else
#define JANUS_CPU_SCHEMAS(define) \
  JANUS_LIBRARY_FRAGMENT_(JANUS_ISA_NS, m) { define(m); }
#endif
