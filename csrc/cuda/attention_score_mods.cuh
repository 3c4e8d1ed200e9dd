// Score modifiers of the CUDA attention kernels (op_schemas.h, janus_kernels/score_mods.py):
//   x = scale q.k;   s = softcap tanh(x / softcap)  (softcap > 0, else s = x);
//   s += rel_bias[h, j - i + Lq - 1]
// then the mask and the softmax as before. The kernels fold scale * log2e into one multiply of
// the raw dot when no modifier is on; with one, the element becomes s in natural units and is
// then scaled by log2e. Kernels with modifiers are separate instantiations, tagged
// WithMods<T> (KernelVariant below), so the kernels without them compile exactly as before
// (same code, same registers).
//
// Backward: dS (the gradient w.r.t. the final score s) goes to d_rel_bias[h, j - i + Lq - 1]
// (fp32 atomicAdd in the dK/dV kernel: the order of the additions, hence the last bits of
// d_rel_bias, varies from run to run; dq/dk/dv stay deterministic), and the dots take
// dS (1 - tanh^2).
#pragma once
#include <math.h>
#include <stdint.h>

namespace janus {
namespace attn {

// Kernel template tag: element type T with the score modifiers compiled in.
template <class T>
struct WithMods {};

// The element type and the modifier switch of a kernel's first template argument.
template <class KT>
struct KernelVariant {
  using Elem = KT;
  static constexpr bool kMods = false;
};
template <class T>
struct KernelVariant<WithMods<T>> {
  using Elem = T;
  static constexpr bool kMods = true;
};

struct ScoreMods {
  const float* rel;     // head h's row of the (H, rel_len) table; nullptr: no bias
  int rel_len, diag0;   // diag0 = Lq - 1: column of (i, j) is j - i + diag0
  float softcap, inv_softcap;   // softcap 0: none
};

__host__ __device__ __forceinline__ ScoreMods make_score_mods(const float* rel_bias,
                                                             int rel_len, float softcap,
                                                             int h, int Lq) {
  ScoreMods m;
  m.rel = rel_bias ? rel_bias + (int64_t)h * rel_len : nullptr;
  m.rel_len = rel_len;
  m.diag0 = Lq - 1;
  m.softcap = softcap;
  m.inv_softcap = softcap > 0.f ? 1.f / softcap : 0.f;
  return m;
}

// The launchers' argument check: softcap 0 or finite > 0; a bias table has Lq + Lk - 1 columns.
__host__ __device__ __forceinline__ bool score_mods_valid(const float* rel_bias, int rel_len,
                                                         float softcap, int Lq, int Lk) {
  if (!(softcap >= 0.f && softcap < INFINITY)) return false;   // NaN fails too
  return !rel_bias || (int64_t)rel_len == (int64_t)Lq + Lk - 1;
}

// Bias of (row i, key j); 0 outside the table (lanes past Lq / Lk of a tile, which the
// callers mask or never store).
__device__ __forceinline__ float rel_bias_at(const ScoreMods& m, int i, int j) {
  const int c = j - i + m.diag0;
  return m.rel && (unsigned)c < (unsigned)m.rel_len ? m.rel[c] : 0.f;
}

// Modified score in natural units from the raw dot; *th = tanh(x / softcap) (0 without).
__device__ __forceinline__ float modified_score(const ScoreMods& m, float raw, float scale,
                                                int i, int j, float* th) {
  float x = raw * scale, t = 0.f;
  if (m.softcap > 0.f) {
    t = tanhf(x * m.inv_softcap);
    x = m.softcap * t;
  }
  *th = t;
  return x + rel_bias_at(m, i, j);
}

// The element's exp2 argument before subtracting the running max / lse: raw * scale * log2e
// without modifiers (sl2 = scale * log2e), the modified score times log2e with them.
template <bool kMods>
__device__ __forceinline__ float score_log2(const ScoreMods& m, float raw, float scale,
                                            float sl2, int i, int j) {
  if constexpr (!kMods) {
    return raw * sl2;
  } else {
    float th;
    return modified_score(m, raw, scale, i, j, &th) * kLog2e;
  }
}

// Whether a launch needs the WithMods instantiation.
__host__ __device__ __forceinline__ bool score_mods_on(const float* rel_bias, float softcap) {
  return rel_bias != nullptr || softcap > 0.f;
}

// d s / d x of the softcap: 1 - tanh^2 (1 without softcap).
__device__ __forceinline__ float softcap_slope(const ScoreMods& m, float th) {
  return m.softcap > 0.f ? 1.f - th * th : 1.f;
}

}  // namespace attn
}  // namespace janus
