// Fused row losses on CPU: bidirectional (symmetric) KL between two logit matrices and the
// JANUS label-smoothed cross entropy. Forward saves only per-row scalars; backward recomputes
// the softmaxes from the logits. Inputs are read-only.
//
// ---------------------------------------------------------------------------------------
// Symmetric KL, per row r (x, y: logits of one row, T: temperature, it = 1/T):
//   x' = x*it, y' = y*it, p = softmax(x'), q = softmax(y'), d = x' - y'
//   KL(p||q) + KL(q||p) = sum_v (p_v - q_v)(log p_v - log q_v) = sum_v (p_v - q_v) d_v
//   (the two log-normalizers cancel because sum(p - q) = 0), so with s_p = sum p d,
//   s_q = sum q d:   loss_r = 0.5 (s_p - s_q)
//   dloss_r/dx = 0.5 it [p (d - s_p + 1) - q]      dloss_r/dy = 0.5 it [q (1 + s_q - d) - p]
//   Any constant shift c of d cancels in both (sum p = sum q = 1), so the kernels use
//   d~ = (x' - m_x) - (y' - m_y) = d - (m_x - m_y): those two differences are the exp
//   arguments anyway and are exact for the entries that matter, which keeps large logits
//   (|x| ~ 1e4, or x = y + 1e4) accurate where d itself would lose ~1e-3 to rounding.
//   One online pass per row keeps m_x, Z_x = sum e^{x'-m_x}, A_x = sum e^{x'-m_x} d~ (and
//   the same for y); when a running max grows the sums are rescaled and A is re-shifted:
//   sum e (d - c_new) = A + (c_old - c_new) Z.
//   Saved per row: [m_x, 1/Z_x, m_y, 1/Z_y, s~_p, s~_q].
//
// -inf logits (the 0 log 0 = 0 convention): an entry where both x and y are -inf contributes
// 0 to the loss and gets 0 gradient. -inf on one side only makes the KL truly infinite: the
// row's loss is +inf and, since the gradient of an infinite loss is undefined, both gradient
// rows are NaN. Each row needs a finite logit on each side (an all -inf row gives NaN); use
// row_mask to skip rows (padding): masked rows give loss 0 and zero gradients and are never
// read. NaN / +inf logits give NaN.
//
// ---------------------------------------------------------------------------------------
// JANUS label-smoothed cross entropy, per row with target t (eps spread over all V entries,
// the target included; t == ignore_index gives loss 0 and a zero gradient row):
//   loss_r = (1-eps)(-log p_t) + eps mean_v(-log p_v) = lse - (1-eps) x_t - eps mean_v x_v
//   dloss_r/dx_v = p_v - eps/V - (1-eps)[v == t]
//   With u_v = x_v - m: -log p_v = log Z - u_v, so the loss is accumulated from exact u_v.
//   A -inf logit makes mean_v(-log p_v) infinite: loss +inf when eps > 0 (the gradient
//   formula above stays finite and is returned as is). Saved per row: [m, 1/Z].
//
// Performance notes (see the design notes in the docstrings of janus_kernels/losses.py):
// exp is at::vec's exp_u20 (~1e-7 relative error, enough for fp32 losses), the forward
// computes the max of chunk k+1 while the exp loop runs on chunk k (chunk in L1), gradients
// are written with non-temporal stores (no read-for-ownership), and fresh gradient memory is
// prefaulted in parallel by the row loop (see prefault; huge pages opt-in, see empty_rows).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>

#if defined(__linux__)
#include <sys/mman.h>
#endif
#if defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>
#endif

namespace {

using at::vec::Vectorized;
constexpr int64_t kChunk = 512;  // elements per online-softmax chunk (2 rows of it sit in L1)
constexpr double kInf = std::numeric_limits<double>::infinity();

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
typename Tr<T>::Acc row_max(const T* x, int64_t n) {
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

// ----------------------------------------------------------------- huge-page outputs
// Fresh multi-MiB outputs come from mmap; with 4 KiB pages their first touch (page faults +
// kernel zeroing) can cost as much as the kernel itself (the rows are first touched by the
// parallel loop, so both threads fault). With JANUS_LOSS_THP=1 the 2 MiB-aligned interior is
// advised to use transparent huge pages, which cut that cost ~4x on a quiet machine. It is
// opt-in because with THP defrag=madvise (a common default) the first faults may stall in
// direct compaction: measured 4-6 s for 1 GB on a fragmented, busy host.
bool use_thp() {
  static const bool on = [] {
    const char* e = std::getenv("JANUS_LOSS_THP");
    return e && e[0] == '1';
  }();
  return on;
}

at::Tensor empty_rows(int64_t R, int64_t V, const at::TensorOptions& opt) {
  at::Tensor t = at::empty({R, V}, opt);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (!use_thp()) return t;
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const uintptr_t b = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t e = b + t.nbytes();
  const uintptr_t lo = (b + kHuge - 1) & ~(kHuge - 1), hi = e & ~(kHuge - 1);
  if (t.nbytes() >= (size_t(8) << 20) && hi > lo)
    madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
#endif
  return t;
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
int64_t nt_head(const T* a, const T* b, int64_t V) {
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
void fill_row(T* p, int64_t V, double value) {
  std::fill(p, p + V, static_cast<T>(value));
}

// ==================================================================== symmetric KL
// Running state of one row; maxima are "safe" (0 while every value seen is -inf) so the exp
// arguments stay -inf (exp -> 0) instead of NaN.
template <typename A>
struct KLState {
  A mx_raw = -std::numeric_limits<A>::infinity(), my_raw = mx_raw;
  A mx = 0, my = 0;
  double zx = 0, ax = 0, zy = 0, ay = 0;

  // Account for a new chunk whose (scaled) maxima are cx, cy.
  void update(A cx, A cy) {
    mx_raw = nanmax(mx_raw, cx);
    my_raw = nanmax(my_raw, cy);
    const A nmx = mx_raw == -std::numeric_limits<A>::infinity() ? A(0) : mx_raw;
    const A nmy = my_raw == -std::numeric_limits<A>::infinity() ? A(0) : my_raw;
    const double dc = (double(mx) - double(my)) - (double(nmx) - double(nmy));
    if (zx != 0) {
      const double a = std::exp(double(mx) - double(nmx));
      ax = a * (ax + dc * zx);
      zx *= a;
    }
    if (zy != 0) {
      const double a = std::exp(double(my) - double(nmy));
      ay = a * (ay + dc * zy);
      zy *= a;
    }
    mx = nmx;
    my = nmy;
  }
};

// Exp/accumulate pass over n elements of one chunk (vector body + scalar tail). With NEXT,
// the same loop also computes the maxima of the following chunk (n == kChunk), which streams
// from DRAM while this chunk is in L1.
template <typename T, bool NEXT>
void kl_chunk(const T* x, const T* y, int64_t n, typename Tr<T>::Acc it,
              KLState<typename Tr<T>::Acc>& s, typename Tr<T>::Acc* nx,
              typename Tr<T>::Acc* ny) {
  using V = typename Tr<T>::V;
  using A = typename Tr<T>::Acc;
  constexpr int64_t W = V::size();
  const V vit(it), vmx(s.mx), vmy(s.my);
  V zx0(0), zx1(0), ax0(0), ax1(0), zy0(0), zy1(0), ay0(0), ay1(0);
  V nmx0(-std::numeric_limits<A>::infinity()), nmx1 = nmx0, nmy0 = nmx0, nmy1 = nmx0;
  int64_t i = 0;
  for (; i + 2 * W <= n; i += 2 * W) {
    const V tx0 = Tr<T>::load(x + i) * vit - vmx, tx1 = Tr<T>::load(x + i + W) * vit - vmx;
    const V ty0 = Tr<T>::load(y + i) * vit - vmy, ty1 = Tr<T>::load(y + i + W) * vit - vmy;
    const V ex0 = vexp(tx0), ex1 = vexp(tx1), ey0 = vexp(ty0), ey1 = vexp(ty1);
    const V d0 = tx0 - ty0, d1 = tx1 - ty1;
    zx0 += ex0; zx1 += ex1; zy0 += ey0; zy1 += ey1;
    ax0 = fma_nz(ex0, d0, ax0); ax1 = fma_nz(ex1, d1, ax1);
    ay0 = fma_nz(ey0, d0, ay0); ay1 = fma_nz(ey1, d1, ay1);
    if constexpr (NEXT) {
      nmx0 = at::vec::maximum(nmx0, Tr<T>::load(x + kChunk + i));
      nmx1 = at::vec::maximum(nmx1, Tr<T>::load(x + kChunk + i + W));
      nmy0 = at::vec::maximum(nmy0, Tr<T>::load(y + kChunk + i));
      nmy1 = at::vec::maximum(nmy1, Tr<T>::load(y + kChunk + i + W));
    }
  }
  A zx = vsum_all(zx0 + zx1), ax = vsum_all(ax0 + ax1);
  A zy = vsum_all(zy0 + zy1), ay = vsum_all(ay0 + ay1);
  for (; i < n; ++i) {
    const A tx = static_cast<A>(x[i]) * it - s.mx, ty = static_cast<A>(y[i]) * it - s.my;
    const A ex = std::exp(tx), ey = std::exp(ty), d = tx - ty;
    zx += ex; zy += ey;
    ax += mul_nz(ex, d); ay += mul_nz(ey, d);
  }
  s.zx += zx; s.ax += ax; s.zy += zy; s.ay += ay;
  if constexpr (NEXT) {
    *nx = vmax_all(at::vec::maximum(nmx0, nmx1));
    *ny = vmax_all(at::vec::maximum(nmy0, nmy1));
  }
}

// One row forward: writes loss and the 6 saved scalars.
template <typename T>
void kl_row_fwd(const T* x, const T* y, int64_t V, typename Tr<T>::Acc it,
                typename Tr<T>::Acc* loss, typename Tr<T>::Acc* st) {
  using A = typename Tr<T>::Acc;
  KLState<A> s;
  const int64_t nfull = V / kChunk, rem = V - nfull * kChunk;
  A cx = 0, cy = 0;
  if (nfull > 0) {
    cx = row_max(x, kChunk);
    cy = row_max(y, kChunk);
  }
  for (int64_t k = 0; k < nfull; ++k) {
    s.update(cx * it, cy * it);
    const int64_t o = k * kChunk;
    if (k + 1 < nfull)
      kl_chunk<T, true>(x + o, y + o, kChunk, it, s, &cx, &cy);
    else
      kl_chunk<T, false>(x + o, y + o, kChunk, it, s, nullptr, nullptr);
  }
  if (rem > 0) {
    const int64_t o = nfull * kChunk;
    s.update(row_max(x + o, rem) * it, row_max(y + o, rem) * it);
    kl_chunk<T, false>(x + o, y + o, rem, it, s, nullptr, nullptr);
  }
  const double sp = s.ax / s.zx, sq = s.ay / s.zy;
  *loss = static_cast<A>(0.5 * (sp - sq));
  st[0] = s.mx; st[1] = static_cast<A>(1.0 / s.zx);
  st[2] = s.my; st[3] = static_cast<A>(1.0 / s.zy);
  st[4] = static_cast<A>(sp); st[5] = static_cast<A>(sq);
}

// One row backward: dx, dy from the saved scalars; g = upstream grad of this row's loss.
template <typename T>
void kl_row_bwd(const T* x, const T* y, T* dx, T* dy, int64_t V, typename Tr<T>::Acc it,
                typename Tr<T>::Acc g, const typename Tr<T>::Acc* st) {
  using Vt = typename Tr<T>::V;
  using A = typename Tr<T>::Acc;
  constexpr int64_t W = Vt::size();
  if (!std::isfinite(double(st[4]) - double(st[5])) || !std::isfinite(st[1]) ||
      !std::isfinite(st[3])) {  // infinite / undefined loss: the gradient is undefined
    fill_row(dx, V, std::nan(""));
    fill_row(dy, V, std::nan(""));
    return;
  }
  const A mx = st[0], izx = st[1], my = st[2], izy = st[3];
  const A sp1 = st[4] - A(1), sq1 = st[5] + A(1), a = A(0.5) * g * it;
  auto scalar = [&](int64_t i) {
    const A tx = static_cast<A>(x[i]) * it - mx, ty = static_cast<A>(y[i]) * it - my;
    const A p = std::exp(tx) * izx, q = std::exp(ty) * izy, d = tx - ty;
    dx[i] = static_cast<T>(a * (mul_nz(p, d - sp1) - q));
    dy[i] = static_cast<T>(a * (mul_nz(q, sq1 - d) - p));
  };
  const int64_t head = nt_head(dx, dy, V);
  const bool nt = head >= 0;
  int64_t i = 0;
  for (; i < std::max<int64_t>(head, 0); ++i) scalar(i);
  const Vt vit(it), vmx(mx), vmy(my), vizx(izx), vizy(izy), vsp1(sp1), vsq1(sq1), va(a);
  for (; i + 2 * W <= V; i += 2 * W) {
    Vt gx[2], gy[2];
    for (int u = 0; u < 2; ++u) {
      const Vt tx = Tr<T>::load(x + i + u * W) * vit - vmx;
      const Vt ty = Tr<T>::load(y + i + u * W) * vit - vmy;
      const Vt p = vexp(tx) * vizx, q = vexp(ty) * vizy, d = tx - ty;
      gx[u] = va * (mul_nz(p, d - vsp1) - q);
      gy[u] = va * (mul_nz(q, vsq1 - d) - p);
    }
    Tr<T>::store2(dx + i, gx[0], gx[1], nt);
    Tr<T>::store2(dy + i, gy[0], gy[1], nt);
  }
  for (; i < V; ++i) scalar(i);
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
void ce_chunk(const T* x, int64_t n, CEState<typename Tr<T>::Acc>& s, typename Tr<T>::Acc* nx) {
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
void ce_row_fwd(const T* x, int64_t V, int64_t t, double eps, typename Tr<T>::Acc* loss,
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
void ce_row_bwd(const T* x, T* dx, int64_t V, int64_t t, double eps, typename Tr<T>::Acc g,
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
at::ScalarType acc_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

void check_logits(const at::Tensor& t, const char* name) {
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

at::Tensor rows_contig(const at::Tensor& t) {  // keeps a row stride, needs unit column stride
  return (t.size(1) == 1 || t.stride(1) == 1) ? t : t.contiguous();
}

void check_rowvec(const at::Tensor& t, int64_t R, const char* name, at::ScalarType dt) {
  TORCH_CHECK(t.device().is_cpu() && t.dim() == 1 && t.size(0) == R && t.scalar_type() == dt,
              name, ": expected a CPU ", dt, " tensor of shape (", R, "), got ", t.scalar_type(),
              " ", t.sizes(), " on ", t.device());
}

int64_t grain_for(int64_t V) { return std::max<int64_t>(1, (int64_t(1) << 15) / V); }

std::tuple<at::Tensor, at::Tensor> symkl_rows_fwd(const at::Tensor& x_, const at::Tensor& y_,
                                                  const c10::optional<at::Tensor>& row_mask_,
                                                  double inv_temperature) {
  check_logits(x_, "logits_p");
  check_logits(y_, "logits_q");
  TORCH_CHECK(x_.sizes() == y_.sizes(), "logits_p and logits_q must have the same shape, got ",
              x_.sizes(), " and ", y_.sizes());
  TORCH_CHECK(x_.scalar_type() == y_.scalar_type(),
              "logits_p and logits_q must share a dtype, got ",
              x_.scalar_type(), " and ", y_.scalar_type());
  TORCH_CHECK(inv_temperature > 0 && std::isfinite(inv_temperature),
              "inv_temperature: must be positive and finite, got ", inv_temperature);
  const int64_t R = x_.size(0), V = x_.size(1);
  const at::Tensor x = rows_contig(x_), y = rows_contig(y_);
  at::Tensor mask;
  if (row_mask_) {
    check_rowvec(*row_mask_, R, "row_mask", at::kBool);
    mask = row_mask_->contiguous();
  }
  const auto opt = x.options().dtype(acc_type(x.scalar_type()));
  at::Tensor loss = at::empty({R}, opt), stats = at::empty({R, 6}, opt);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "symkl_rows_fwd", [&] {
    using A = typename Tr<scalar_t>::Acc;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    const int64_t sx = x.stride(0), sy = y.stride(0);
    const bool* mp = mask.defined() ? mask.const_data_ptr<bool>() : nullptr;
    A* lp = loss.data_ptr<A>();
    A* stp = stats.data_ptr<A>();
    const A it = static_cast<A>(inv_temperature);
    at::parallel_for(0, R, grain_for(V), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        if (mp && !mp[r]) {
          lp[r] = 0;
          std::fill(stp + 6 * r, stp + 6 * r + 6, A(0));
          continue;
        }
        kl_row_fwd<scalar_t>(xp + r * sx, yp + r * sy, V, it, lp + r, stp + 6 * r);
      }
    });
  });
  return {loss, stats};
}

std::tuple<at::Tensor, at::Tensor> symkl_rows_bwd(const at::Tensor& grad_, const at::Tensor& x_,
                                                  const at::Tensor& y_, const at::Tensor& stats_,
                                                  const c10::optional<at::Tensor>& row_mask_,
                                                  double inv_temperature) {
  check_logits(x_, "logits_p");
  check_logits(y_, "logits_q");
  TORCH_CHECK(x_.sizes() == y_.sizes() && x_.scalar_type() == y_.scalar_type(),
              "logits_p and logits_q must have the same shape and dtype");
  const int64_t R = x_.size(0), V = x_.size(1);
  const auto at_ = acc_type(x_.scalar_type());
  check_rowvec(grad_, R, "grad", at_);
  TORCH_CHECK(stats_.dim() == 2 && stats_.size(0) == R && stats_.size(1) == 6 &&
                  stats_.scalar_type() == at_,
              "stats: expected (", R, ", 6) ", at_, ", got ", stats_.sizes(), " ",
              stats_.scalar_type());
  const at::Tensor x = rows_contig(x_), y = rows_contig(y_);
  const at::Tensor grad = grad_.contiguous(), stats = stats_.contiguous();
  at::Tensor mask;
  if (row_mask_) {
    check_rowvec(*row_mask_, R, "row_mask", at::kBool);
    mask = row_mask_->contiguous();
  }
  at::Tensor dx = empty_rows(R, V, x.options()), dy = empty_rows(R, V, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "symkl_rows_bwd", [&] {
    using A = typename Tr<scalar_t>::Acc;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    scalar_t* dxp = dx.data_ptr<scalar_t>();
    scalar_t* dyp = dy.data_ptr<scalar_t>();
    const int64_t sx = x.stride(0), sy = y.stride(0);
    const bool* mp = mask.defined() ? mask.const_data_ptr<bool>() : nullptr;
    const A* gp = grad.const_data_ptr<A>();
    const A* stp = stats.const_data_ptr<A>();
    const A it = static_cast<A>(inv_temperature);
    at::parallel_for(0, R, grain_for(V), [&](int64_t r0, int64_t r1) {
      prefault(dxp + r0 * V, size_t(r1 - r0) * V * sizeof(scalar_t));
      prefault(dyp + r0 * V, size_t(r1 - r0) * V * sizeof(scalar_t));
      for (int64_t r = r0; r < r1; ++r) {
        if (mp && !mp[r]) {
          fill_row(dxp + r * V, V, 0.0);
          fill_row(dyp + r * V, V, 0.0);
          continue;
        }
        kl_row_bwd<scalar_t>(xp + r * sx, yp + r * sy, dxp + r * V, dyp + r * V, V, it, gp[r],
                             stp + 6 * r);
      }
      store_fence();
    });
  });
  return {dx, dy};
}

void check_targets(const at::Tensor& target, int64_t R, int64_t V, int64_t ignore_index) {
  check_rowvec(target, R, "target", at::kLong);
  const at::Tensor t = target.contiguous();
  const int64_t* tp = t.const_data_ptr<int64_t>();
  for (int64_t r = 0; r < R; ++r)
    TORCH_CHECK(tp[r] == ignore_index || (tp[r] >= 0 && tp[r] < V), "target: value ", tp[r],
                " at row ", r, " is outside [0, ", V, ") and is not ignore_index (", ignore_index,
                ")");
}

std::tuple<at::Tensor, at::Tensor> ce_rows_fwd(const at::Tensor& x_, const at::Tensor& target_,
                                               double label_smoothing, int64_t ignore_index) {
  check_logits(x_, "logits");
  TORCH_CHECK(label_smoothing >= 0 && label_smoothing <= 1,
              "label_smoothing: must be in [0, 1], got ",
              label_smoothing);
  const int64_t R = x_.size(0), V = x_.size(1);
  check_targets(target_, R, V, ignore_index);
  const at::Tensor x = rows_contig(x_), target = target_.contiguous();
  const auto opt = x.options().dtype(acc_type(x.scalar_type()));
  at::Tensor loss = at::empty({R}, opt), stats = at::empty({R, 2}, opt);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "ce_rows_fwd", [&] {
    using A = typename Tr<scalar_t>::Acc;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const int64_t sx = x.stride(0);
    const int64_t* tp = target.const_data_ptr<int64_t>();
    A* lp = loss.data_ptr<A>();
    A* stp = stats.data_ptr<A>();
    at::parallel_for(0, R, grain_for(V), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        if (tp[r] == ignore_index) {
          lp[r] = 0;
          stp[2 * r] = stp[2 * r + 1] = 0;
        } else if (label_smoothing > 0) {
          ce_row_fwd<scalar_t, true>(xp + r * sx, V, tp[r], label_smoothing, lp + r, stp + 2 * r);
        } else {
          ce_row_fwd<scalar_t, false>(xp + r * sx, V, tp[r], 0.0, lp + r, stp + 2 * r);
        }
      }
    });
  });
  return {loss, stats};
}

at::Tensor ce_rows_bwd(const at::Tensor& grad_, const at::Tensor& x_, const at::Tensor& target_,
                       const at::Tensor& stats_, double label_smoothing, int64_t ignore_index) {
  check_logits(x_, "logits");
  const int64_t R = x_.size(0), V = x_.size(1);
  const auto at_ = acc_type(x_.scalar_type());
  check_rowvec(grad_, R, "grad", at_);
  check_targets(target_, R, V, ignore_index);
  TORCH_CHECK(stats_.dim() == 2 && stats_.size(0) == R && stats_.size(1) == 2 &&
                  stats_.scalar_type() == at_,
              "stats: expected (", R, ", 2) ", at_, ", got ", stats_.sizes(), " ",
              stats_.scalar_type());
  const at::Tensor x = rows_contig(x_), target = target_.contiguous();
  const at::Tensor grad = grad_.contiguous(), stats = stats_.contiguous();
  at::Tensor dx = empty_rows(R, V, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "ce_rows_bwd", [&] {
    using A = typename Tr<scalar_t>::Acc;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* dxp = dx.data_ptr<scalar_t>();
    const int64_t sx = x.stride(0);
    const int64_t* tp = target.const_data_ptr<int64_t>();
    const A* gp = grad.const_data_ptr<A>();
    const A* stp = stats.const_data_ptr<A>();
    at::parallel_for(0, R, grain_for(V), [&](int64_t r0, int64_t r1) {
      prefault(dxp + r0 * V, size_t(r1 - r0) * V * sizeof(scalar_t));
      for (int64_t r = r0; r < r1; ++r) {
        if (tp[r] == ignore_index)
          fill_row(dxp + r * V, V, 0.0);
        else
          ce_row_bwd<scalar_t>(xp + r * sx, dxp + r * V, V, tp[r], label_smoothing, gp[r],
                               stp + 2 * r);
      }
      store_fence();
    });
  });
  return dx;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(janus, m) {
  // Row-wise fused losses (see the math at the top of csrc/cpu/loss.cpp). Logits (R, V) with a
  // unit last stride; loss/stats/grad are float32 (float64 for float64 logits).
  m.def("symkl_rows_fwd(Tensor logits_p, Tensor logits_q, Tensor? row_mask, "
        "float inv_temperature) -> (Tensor loss, Tensor stats)");
  m.def("symkl_rows_bwd(Tensor grad, Tensor logits_p, Tensor logits_q, Tensor stats, "
        "Tensor? row_mask, float inv_temperature) -> (Tensor grad_p, Tensor grad_q)");
  m.def("ce_rows_fwd(Tensor logits, Tensor target, float label_smoothing, int ignore_index) "
        "-> (Tensor loss, Tensor stats)");
  m.def("ce_rows_bwd(Tensor grad, Tensor logits, Tensor target, Tensor stats, "
        "float label_smoothing, int ignore_index) -> Tensor");
}

TORCH_LIBRARY_IMPL(janus, CPU, m) {
  m.impl("symkl_rows_fwd", &symkl_rows_fwd);
  m.impl("symkl_rows_bwd", &symkl_rows_bwd);
  m.impl("ce_rows_fwd", &ce_rows_fwd);
  m.impl("ce_rows_bwd", &ce_rows_bwd);
}
