// Shared pieces of the CPU row-loss kernels (csrc/cpu/loss.cpp: symmetric KL and cross
// entropy; csrc/cpu/janus_loss.cpp: the fused JANUS criterion): vector traits, a fast exp,
// the 0*inf=0 helpers, output allocation (prefault, huge pages, non-temporal stores), the
// cross-entropy row kernels and the argument checks. The math is at the top of loss.cpp.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include "output_pool.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <map>
#include <mutex>
#include <utility>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif
#if defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>
#endif

namespace janus_loss_cpu {

using at::vec::Vectorized;
constexpr int64_t kChunk = 512;  // elements per online-softmax chunk (2 rows of it sit in L1)

// ------------------------------------------------------------------------- vector traits
// Acc is the accumulation type (float for fp32/bf16/fp16 inputs, double for fp64).
template <typename T>
struct Tr {
  using Acc = float;
  using V = Vectorized<float>;
  static V load(const T* p) {
    V o;
    at::vec::load_to_float(p, o);
    return o;
  }
  // Stores 2*V::size() elements.
  static void store2(T* p, V a, V b, bool nt) {
    auto v = at::vec::convert_from_float<T>(a, b);
#if defined(CPU_CAPABILITY_AVX512)
    if (nt) {
      _mm512_stream_si512(reinterpret_cast<__m512i*>(p), __m512i(v));
      return;
    }
#endif
    (void)nt;
    v.store(p);
  }
};
template <>
struct Tr<float> {
  using Acc = float;
  using V = Vectorized<float>;
  static V load(const float* p) { return V::loadu(p); }
  static void store2(float* p, V a, V b, bool nt) {
#if defined(CPU_CAPABILITY_AVX512)
    if (nt) {
      _mm512_stream_ps(p, a);
      _mm512_stream_ps(p + V::size(), b);
      return;
    }
#endif
    (void)nt;
    a.store(p);
    b.store(p + V::size());
  }
};
template <>
struct Tr<double> {
  using Acc = double;
  using V = Vectorized<double>;
  static V load(const double* p) { return V::loadu(p); }
  static void store2(double* p, V a, V b, bool) {
    a.store(p);
    b.store(p + V::size());
  }
};

#if defined(CPU_CAPABILITY_AVX512)
// exp with exp_u20's degree-5 polynomial but ~10 instructions: n = round(x log2 e),
// r = x - n ln2 (two-step Cody-Waite), exp(x) = scalef(poly(r), n). x is clamped below at -110
// so -inf gives exactly 0 (2^-159 underflows; the 0*inf=0 rule relies on exp(-inf) == 0) and
// roundscale never sees -inf; max(lo, x) keeps NaN (maxps returns its 2nd operand on NaN).
inline Vectorized<float> vexp(const Vectorized<float>& v) {
  const __m512 x = _mm512_min_ps(_mm512_max_ps(_mm512_set1_ps(-110.f), v), _mm512_set1_ps(89.f));
  const __m512 xv = _mm512_mask_mov_ps(x, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), v);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(xv, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), xv);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187045e-06f), r);
  __m512 p = _mm512_fmadd_ps(r, _mm512_set1_ps(0.00828929059f), _mm512_set1_ps(0.0418978221f));
  p = _mm512_fmadd_ps(r, p, _mm512_set1_ps(0.166676521f));
  p = _mm512_fmadd_ps(r, p, _mm512_set1_ps(0.499991506f));
  p = _mm512_fmadd_ps(r, p, _mm512_set1_ps(0.999999701f));
  p = _mm512_fmadd_ps(r, p, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}
#else
inline Vectorized<float> vexp(const Vectorized<float>& v) { return v.exp_u20(); }
#endif
inline Vectorized<double> vexp(const Vectorized<double>& v) { return v.exp(); }

// acc + e*v, except that entries with e == 0 add nothing (0 * inf counts as 0).
template <typename V>
inline V fma_nz(const V& e, const V& v, const V& acc) {
  return acc + ((e != V(0)) & (e * v));
}
#if defined(CPU_CAPABILITY_AVX512)
template <>
inline Vectorized<float> fma_nz(const Vectorized<float>& e, const Vectorized<float>& v,
                                const Vectorized<float>& acc) {
  const __mmask16 k = _mm512_cmp_ps_mask(e, _mm512_setzero_ps(), _CMP_NEQ_UQ);
  return _mm512_mask3_fmadd_ps(e, v, acc, k);
}
#endif
// e*v, 0 where e == 0.
template <typename S>
inline Vectorized<S> mul_nz(const Vectorized<S>& e, const Vectorized<S>& v) {
  return (e != Vectorized<S>(0)) & (e * v);
}
inline float mul_nz(float e, float v) { return e == 0.f ? 0.f : e * v; }
inline double mul_nz(double e, double v) { return e == 0.0 ? 0.0 : e * v; }

template <typename A>
inline A nanmax(A a, A b) {  // NaN-propagating max
  return (a > b || std::isnan(a)) ? a : b;
}
template <typename V>
inline typename V::value_type vmax_all(const V& v) {
  using S = typename V::value_type;
  return at::vec::vec_reduce_all<S>([](V& a, V& b) { return at::vec::maximum(a, b); }, v);
}
template <typename V>
inline typename V::value_type vsum_all(const V& v) {
  using S = typename V::value_type;
  return at::vec::vec_reduce_all<S>([](V& a, V& b) { return a + b; }, v);
}

// Max over n elements of a row (vector body + scalar tail), NaN-propagating.
template <typename T>
inline typename Tr<T>::Acc row_max(const T* x, int64_t n) {
  using V = typename Tr<T>::V;
  using A = typename Tr<T>::Acc;
  constexpr int64_t W = V::size();
  V m0(-std::numeric_limits<A>::infinity()), m1 = m0;
  int64_t i = 0;
  for (; i + 2 * W <= n; i += 2 * W) {
    m0 = at::vec::maximum(m0, Tr<T>::load(x + i));
    m1 = at::vec::maximum(m1, Tr<T>::load(x + i + W));
  }
  A m = vmax_all(at::vec::maximum(m0, m1));
  for (; i < n; ++i) m = nanmax(m, static_cast<A>(x[i]));
  return m;
}

// Loss gradients of >= 8 MiB come from the shared output pool (output_pool.h).
inline at::Tensor empty_rows(int64_t R, int64_t V, const at::TensorOptions& opt) {
  return janus_cpu::pooled_empty({R, V}, opt, size_t(8) << 20);
}

// Fault in [p, p + n) ahead of the stores with one MADV_POPULATE_WRITE (Linux >= 5.14) instead of
// one page-fault trap per 4 KiB page; each thread of the row loop prefaults its own rows, so the
// kernel zeroes them in parallel. Measured 1.6x faster than faulting on first store for 1 GB of
// fresh gradients on a busy 2-core host. Already-mapped memory makes it a cheap page-table walk;
// older kernels return EINVAL and the stores fault as usual. JANUS_LOSS_PREFAULT=0 disables it.
inline void prefault(void* p, size_t n) {
#if defined(__linux__)
  static const bool on = [] {
    const char* e = std::getenv("JANUS_LOSS_PREFAULT");
    return !(e && e[0] == '0');
  }();
  constexpr int kPopulateWrite = 23;  // MADV_POPULATE_WRITE (not in older libc headers)
  if (!on || n < (size_t(1) << 20)) return;
  const uintptr_t b = (reinterpret_cast<uintptr_t>(p) + 4095) & ~uintptr_t(4095);
  const uintptr_t e = (reinterpret_cast<uintptr_t>(p) + n) & ~uintptr_t(4095);
  if (e > b) madvise(reinterpret_cast<void*>(b), e - b, kPopulateWrite);
#else
  (void)p; (void)n;
#endif
}

inline void store_fence() {
#if defined(CPU_CAPABILITY_AVX512)
  _mm_sfence();  // non-temporal stores are weakly ordered: publish them before returning
#endif
}

// Number of leading scalar elements so that dst + head is 64-byte aligned (then every
// vector step of 2*W elements stays aligned: 128 B for fp32, 64 B for bf16/fp16); -1 when
// non-temporal stores are not used.
template <typename T>
inline int64_t nt_head(const T* a, const T* b, int64_t V) {
#if defined(CPU_CAPABILITY_AVX512)
  if (sizeof(T) == 8) return -1;
  const uintptr_t ma = reinterpret_cast<uintptr_t>(a) & 63;
  const uintptr_t mb = reinterpret_cast<uintptr_t>(b) & 63;
  if (ma != mb || ma % sizeof(T) != 0) return -1;
  const int64_t head = ma == 0 ? 0 : (64 - ma) / sizeof(T);
  return head <= V ? head : -1;
#else
  (void)a; (void)b; (void)V;
  return -1;
#endif
}

template <typename T>
inline void fill_row(T* p, int64_t V, double value) {
  std::fill(p, p + V, static_cast<T>(value));
}

// ================================================================ smoothed cross entropy
template <typename A>
struct CEState {
  A m_raw = -std::numeric_limits<A>::infinity(), m = 0;
  double z = 0, u = 0;  // sum e^{x-m}, sum (x - m)
  int64_t seen = 0;
  void update(A c) {
    m_raw = nanmax(m_raw, c);
    const A nm = m_raw == -std::numeric_limits<A>::infinity() ? A(0) : m_raw;
    if (z != 0) z *= std::exp(double(m) - double(nm));
    u += double(seen) * (double(m) - double(nm));
    m = nm;
  }
};

template <typename T, bool NEXT, bool SMOOTH>
inline void ce_chunk(const T* x, int64_t n, CEState<typename Tr<T>::Acc>& s, typename Tr<T>::Acc* nx) {
  using V = typename Tr<T>::V;
  using A = typename Tr<T>::Acc;
  constexpr int64_t W = V::size();
  const V vm(s.m);
  V z0(0), z1(0), u0(0), u1(0);
  V nm0(-std::numeric_limits<A>::infinity()), nm1 = nm0;
  int64_t i = 0;
  for (; i + 2 * W <= n; i += 2 * W) {
    const V t0 = Tr<T>::load(x + i) - vm, t1 = Tr<T>::load(x + i + W) - vm;
    z0 += vexp(t0); z1 += vexp(t1);
    if constexpr (SMOOTH) { u0 += t0; u1 += t1; }
    if constexpr (NEXT) {
      nm0 = at::vec::maximum(nm0, Tr<T>::load(x + kChunk + i));
      nm1 = at::vec::maximum(nm1, Tr<T>::load(x + kChunk + i + W));
    }
  }
  A z = vsum_all(z0 + z1), u = SMOOTH ? vsum_all(u0 + u1) : A(0);
  for (; i < n; ++i) {
    const A t = static_cast<A>(x[i]) - s.m;
    z += std::exp(t);
    if constexpr (SMOOTH) u += t;
  }
  s.z += z; s.u += u; s.seen += n;
  if constexpr (NEXT) *nx = vmax_all(at::vec::maximum(nm0, nm1));
}

template <typename T, bool SMOOTH>
inline void ce_row_fwd(const T* x, int64_t V, int64_t t, double eps, typename Tr<T>::Acc* loss,
                typename Tr<T>::Acc* st) {
  using A = typename Tr<T>::Acc;
  CEState<A> s;
  const int64_t nfull = V / kChunk, rem = V - nfull * kChunk;
  A c = nfull > 0 ? row_max(x, kChunk) : A(0);
  for (int64_t k = 0; k < nfull; ++k) {
    s.update(c);
    const int64_t o = k * kChunk;
    if (k + 1 < nfull)
      ce_chunk<T, true, SMOOTH>(x + o, kChunk, s, &c);
    else
      ce_chunk<T, false, SMOOTH>(x + o, kChunk, s, nullptr);
  }
  if (rem > 0) {
    const int64_t o = nfull * kChunk;
    s.update(row_max(x + o, rem));
    ce_chunk<T, false, SMOOTH>(x + o, rem, s, nullptr);
  }
  const double logz = std::log(s.z);
  const double ut = double(static_cast<A>(x[t])) - double(s.m);
  double l = (1.0 - eps) * (logz - ut);
  if (SMOOTH) l += eps * (logz - s.u / double(V));
  *loss = static_cast<A>(l);
  st[0] = s.m;
  st[1] = static_cast<A>(1.0 / s.z);
}

template <typename T>
inline void ce_row_bwd(const T* x, T* dx, int64_t V, int64_t t, double eps, typename Tr<T>::Acc g,
                const typename Tr<T>::Acc* st) {
  using Vt = typename Tr<T>::V;
  using A = typename Tr<T>::Acc;
  constexpr int64_t W = Vt::size();
  const A m = st[0], gz = g * st[1], c0 = static_cast<A>(double(g) * eps / double(V));
  const int64_t head = nt_head(dx, dx, V);
  const bool nt = head >= 0;
  int64_t i = 0;
  for (; i < std::max<int64_t>(head, 0); ++i)
    dx[i] = static_cast<T>(std::exp(static_cast<A>(x[i]) - m) * gz - c0);
  const Vt vm(m), vgz(gz), vc0(c0);
  for (; i + 2 * W <= V; i += 2 * W) {
    const Vt g0 = vexp(Tr<T>::load(x + i) - vm) * vgz - vc0;
    const Vt g1 = vexp(Tr<T>::load(x + i + W) - vm) * vgz - vc0;
    Tr<T>::store2(dx + i, g0, g1, nt);
  }
  for (; i < V; ++i) dx[i] = static_cast<T>(std::exp(static_cast<A>(x[i]) - m) * gz - c0);
  // The target entry, recomputed in double (p_t - 1 cancels badly in low precision). The
  // fence orders it after this thread's non-temporal stores to the same line.
  if (nt) store_fence();
  const double pt = std::exp(double(static_cast<A>(x[t])) - double(m)) * double(st[1]);
  dx[t] = static_cast<T>(double(g) * (pt - eps / double(V) - (1.0 - eps)));
}

// ================================================================== checks & drivers
inline at::ScalarType acc_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

inline void check_logits(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, ": expected a CPU tensor, got ", t.device());
  TORCH_CHECK(t.dim() == 2, name, ": expected a 2-D (rows, vocab) tensor, got shape ", t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16 ||
                  t.scalar_type() == at::kHalf || t.scalar_type() == at::kDouble,
              name, ": expected float32/bfloat16/float16/float64, got ", t.scalar_type());
  TORCH_CHECK(t.size(1) > 0, name, ": the vocabulary (last) dimension must be non-empty");
  TORCH_CHECK(t.size(0) <= 1 || t.stride(1) == 1 || t.size(1) == 1,
              name, ": the last dimension must be contiguous (stride 1), got strides ",
              t.strides());
}

inline at::Tensor rows_contig(const at::Tensor& t) {  // keeps a row stride, needs unit column stride
  return (t.size(1) == 1 || t.stride(1) == 1) ? t : t.contiguous();
}

inline void check_rowvec(const at::Tensor& t, int64_t R, const char* name, at::ScalarType dt) {
  TORCH_CHECK(t.device().is_cpu() && t.dim() == 1 && t.size(0) == R && t.scalar_type() == dt,
              name, ": expected a CPU ", dt, " tensor of shape (", R, "), got ", t.scalar_type(),
              " ", t.sizes(), " on ", t.device());
}

inline int64_t grain_for(int64_t V) { return std::max<int64_t>(1, (int64_t(1) << 15) / V); }

inline void check_targets(const at::Tensor& target, int64_t R, int64_t V, int64_t ignore_index) {
  check_rowvec(target, R, "target", at::kLong);
  const at::Tensor t = target.contiguous();
  const int64_t* tp = t.const_data_ptr<int64_t>();
  for (int64_t r = 0; r < R; ++r)
    TORCH_CHECK(tp[r] == ignore_index || (tp[r] >= 0 && tp[r] < V), "target: value ", tp[r],
                " at row ", r, " is outside [0, ", V, ") and is not ignore_index (", ignore_index,
                ")");
}

}  // namespace janus_loss_cpu
