// CUDA kernels for the fused JANUS criterion rows: per AR row r the AR cross entropy CE(a_r);
// per masked row m (AR row r = idx[m]) CE(n_m), CE(x_m) and the symmetric KLs KLs(a_r, n_m),
// KLs(a_r, x_m), KLs(n_m, x_m). The math, the saved statistics ([m_a, 1/Z_a] per AR row; [m_a,
// 1/Z_a, m_n, 1/Z_n, m_x, 1/Z_x, s_an^p, s_an^q, s_ax^p, s_ax^q, s_nx^p, s_nx^q] per masked
// row), the masked-loss columns [CE(n), CE(x), KLs(a,n), KLs(a,x), KLs(n,x)] and the special-value
// rules are those of csrc/cpu/janus_loss.cpp (read its header comment). GPU mapping:
//
// The plan `first` (N,): the smallest masked row claiming each AR row, or -1 (computed by the
// caller on the device). A masked row m is the "primary" of its AR row when first[idx[m]] == m,
// an "extra" otherwise (idx with repeats; never the case for JANUS batches, but legal).
//
// Forward (two independent launches):
//   A, one block per AR row r: the row triple (a_r, n_m, x_m) of its primary m when m's target
//     is valid, with the AR CE; otherwise the AR CE alone (and the primary's five terms are 0,
//     ignored target, or NaN, out-of-range target).
//   B, one block per masked row: extras only (other blocks exit at once): the triple without
//     the AR CE.
//   A triple is two passes over its three rows (the second from L2): the three maxima (block
//   max-reduce), then one sweep accumulating Z_s, U_s and the six A_pq sums with exact
//   t_s = s - m_s (block sum-reduce); 3 exps per element triple.
// Backward ((row, 1024-column chunk) grids, elementwise, coalesced):
//   A over AR rows: d_ar, and d_nar / d_aux of the primaries; CE-only / zero / NaN rows.
//   B over masked rows, launched after A on the same stream: d_nar / d_aux of the extras, and
//     their AR-side KL gradient added into d_ar with atomics. The sum is order dependent: with
//     several extras on one AR row, the rounding of d_ar depends on the order the blocks run
//     (one rounding to the logits' dtype per extra, as in the CPU op's serial sweep).
// Out-of-range targets and idx values give NaN (the CPU op raises; that needs a host sync).
#include "loss_common.cuh"

namespace {

using namespace janus_loss_cuda;

constexpr int kMTerms = 5;   // CE(n), CE(x), KLs(a,n), KLs(a,x), KLs(n,x)
constexpr int kMStats = 12;
constexpr int kArStats = 2;
constexpr int64_t kIgnored = -1, kInvalid = -2;

// A target as a column index, kIgnored or kInvalid.
__device__ __forceinline__ int64_t target_col(int64_t t, int64_t V, int64_t ignore_index) {
  if (t == ignore_index) return kIgnored;
  return (t >= 0 && t < V) ? t : kInvalid;
}

template <typename T>
struct Rows {  // typed views of the arguments
  using A = typename AccT<T>::type;
  const JanusRowsArgs& g;
  __device__ const T* ar(int64_t r) const { return static_cast<const T*>(g.ar) + r * g.stride_ar; }
  __device__ const T* nar(int64_t m) const {
    return static_cast<const T*>(g.nar) + m * g.stride_nar;
  }
  __device__ const T* aux(int64_t m) const {
    return static_cast<const T*>(g.aux) + m * g.stride_aux;
  }
  __device__ A* ar_loss() const { return static_cast<A*>(g.ar_loss); }
  __device__ A* m_loss(int64_t m) const { return static_cast<A*>(g.masked_loss) + kMTerms * m; }
  __device__ A* ar_st(int64_t r) const { return static_cast<A*>(g.ar_stats) + kArStats * r; }
  __device__ A* m_st(int64_t m) const { return static_cast<A*>(g.masked_stats) + kMStats * m; }
  __device__ T* d(void* base, int64_t row) const { return static_cast<T*>(base) + row * g.vocab; }
};

// ------------------------------------------------------------------------------ forward
// One row triple, called by every thread of the block. ta: the AR target column, kIgnored or
// kInvalid (AR loss 0 / NaN); ar_loss == nullptr: no AR CE and no AR stats (an extra).
template <typename T>
__device__ __forceinline__ void triple_fwd_block(const T* a, const T* n, const T* x, int64_t V,
                                                 int64_t ta, int64_t tm,
                                                 typename AccT<T>::type eps,
                                                 typename AccT<T>::type* ar_loss,
                                                 typename AccT<T>::type* ar_st,
                                                 typename AccT<T>::type* m_loss,
                                                 typename AccT<T>::type* st) {
  using A = typename AccT<T>::type;
  A mx3[3] = {-INFINITY, -INFINITY, -INFINITY};
  for (int64_t base = threadIdx.x; base < V; base += int64_t(kFwdThreads) * kUnroll) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = base + int64_t(u) * kFwdThreads;
      if (i < V) {
        mx3[0] = fmax(mx3[0], A(load(a + i)));
        mx3[1] = fmax(mx3[1], A(load(n + i)));
        mx3[2] = fmax(mx3[2], A(load(x + i)));
      }
    }
  }
  block_reduce(mx3, MaxOp());
  const A ma = safe(mx3[0]), mn = safe(mx3[1]), mx = safe(mx3[2]);
  // s: Z_a Z_n Z_x U_a U_n U_x A_an^a A_an^n A_ax^a A_ax^x A_nx^n A_nx^x
  A s[12];
#pragma unroll
  for (int k = 0; k < 12; ++k) s[k] = A(0);
  for (int64_t base = threadIdx.x; base < V; base += int64_t(kFwdThreads) * kUnroll) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = base + int64_t(u) * kFwdThreads;
      if (i < V) {
        const A ta_ = A(load(a + i)) - ma, tn_ = A(load(n + i)) - mn, tx_ = A(load(x + i)) - mx;
        const A ea = dexp(ta_), en = dexp(tn_), ex = dexp(tx_);
        const A dan = ta_ - tn_, dax = ta_ - tx_, dnx = tn_ - tx_;
        s[0] += ea; s[1] += en; s[2] += ex;
        s[3] += ta_; s[4] += tn_; s[5] += tx_;
        s[6] += mul_nz(ea, dan); s[7] += mul_nz(en, dan);  // 0 * inf = 0 (the -inf rules)
        s[8] += mul_nz(ea, dax); s[9] += mul_nz(ex, dax);
        s[10] += mul_nz(en, dnx); s[11] += mul_nz(ex, dnx);
      }
    }
  }
  block_reduce(s, SumOp());
  if (threadIdx.x != 0) return;
  const A lz[3] = {dlog(s[0]), dlog(s[1]), dlog(s[2])};
  auto ce = [&](int k, A t_target) {
    A l = (A(1) - eps) * (lz[k] - t_target);
    if (eps > A(0)) l += eps * (lz[k] - s[3 + k] / A(V));  // eps = 0: a -inf U_s is fine
    return l;
  };
  if (ar_loss != nullptr) {
    *ar_loss = ta >= 0 ? ce(0, A(load(a + ta)) - ma) : (ta == kIgnored ? A(0) : A(NAN));
    ar_st[0] = ma;
    ar_st[1] = A(1) / s[0];
  }
  m_loss[0] = ce(1, A(load(n + tm)) - mn);
  m_loss[1] = ce(2, A(load(x + tm)) - mx);
  const A sp[3] = {s[6] / s[0], s[8] / s[0], s[10] / s[1]};
  const A sq[3] = {s[7] / s[1], s[9] / s[2], s[11] / s[2]};
  const A m3[3] = {ma, mn, mx};
#pragma unroll
  for (int k = 0; k < 3; ++k) {
    m_loss[2 + k] = A(0.5) * (sp[k] - sq[k]);
    st[2 * k] = m3[k];
    st[2 * k + 1] = A(1) / s[k];
    st[6 + 2 * k] = sp[k];
    st[7 + 2 * k] = sq[k];
  }
}

// The five terms of a masked row without a triple: 0 (ignored target) or NaN (invalid target
// or idx); stats 0.
template <typename A>
__device__ __forceinline__ void fill_masked(A* m_loss, A* st, A v) {
  for (int k = 0; k < kMTerms; ++k) m_loss[k] = v;
  for (int k = 0; k < kMStats; ++k) st[k] = A(0);
}

template <typename T>
__global__ void __launch_bounds__(kFwdThreads, 1) rows_fwd_ar_kernel(const JanusRowsArgs g) {
  using A = typename AccT<T>::type;
  const Rows<T> v{g};
  const int64_t r = blockIdx.x, V = g.vocab, m = g.first[r];
  const int64_t ta = target_col(g.ar_target[r], V, g.ignore_index);
  const int64_t tm = m >= 0 ? target_col(g.masked_target[m], V, g.ignore_index) : kIgnored;
  const A eps = A(g.label_smoothing);
  if (m >= 0 && tm >= 0) {
    triple_fwd_block<T>(v.ar(r), v.nar(m), v.aux(m), V, ta, tm, eps, v.ar_loss() + r, v.ar_st(r),
                        v.m_loss(m), v.m_st(m));
    return;
  }
  if (m >= 0 && threadIdx.x == 0)  // the primary's target is ignored (0) or invalid (NaN)
    fill_masked(v.m_loss(m), v.m_st(m), tm == kIgnored ? A(0) : A(NAN));
  if (ta < 0) {  // ignored (0) or invalid (NaN) AR target: the row is not read
    if (threadIdx.x == 0) {
      v.ar_loss()[r] = ta == kIgnored ? A(0) : A(NAN);
      v.ar_st(r)[0] = v.ar_st(r)[1] = A(0);
    }
  } else if (eps > A(0)) {
    ce_row_fwd_block<T, true>(v.ar(r), V, ta, eps, v.ar_loss() + r, v.ar_st(r));
  } else {
    ce_row_fwd_block<T, false>(v.ar(r), V, ta, A(0), v.ar_loss() + r, v.ar_st(r));
  }
}

template <typename T>
__global__ void __launch_bounds__(kFwdThreads, 1) rows_fwd_extra_kernel(const JanusRowsArgs g) {
  using A = typename AccT<T>::type;
  const Rows<T> v{g};
  const int64_t m = blockIdx.x, V = g.vocab, r = g.ar_kl_rows[m];
  const bool idx_ok = r >= 0 && r < g.n_ar;
  if (idx_ok && g.first[r] == m) return;  // a primary: kernel A
  const int64_t tm = target_col(g.masked_target[m], V, g.ignore_index);
  if (!idx_ok || tm < 0) {
    if (threadIdx.x == 0)
      fill_masked(v.m_loss(m), v.m_st(m), idx_ok && tm == kIgnored ? A(0) : A(NAN));
    return;
  }
  triple_fwd_block<T>(v.ar(r), v.nar(m), v.aux(m), V, kIgnored, tm, A(g.label_smoothing),
                      nullptr, nullptr, v.m_loss(m), v.m_st(m));
}

// ----------------------------------------------------------------------------- backward
// Upstream coefficients of one triple: c_a (AR CE; 0 when not part of this triple), c_n, c_x
// and the halved KL gradients; nan_*: gradient rows that are NaN (a KL term with an infinite
// or undefined loss and a non-zero gradient, or an invalid AR target).
template <typename A>
struct Coef {
  A ca, cn, cx, kan, kax, knx;
  bool nan_a, nan_n, nan_x;
};

template <typename A>
__device__ __forceinline__ Coef<A> make_coef(const A* gm, A ca, bool nan_a, const A* st) {
  Coef<A> c{ca, gm[0], gm[1], A(0.5) * gm[2], A(0.5) * gm[3], A(0.5) * gm[4], nan_a, false, false};
  // A zero gradient drops its term (a zero-weight infinite KL does not poison the rows).
  auto check = [&](A& k, int pair, int s1, int s2, bool& n1, bool& n2) {
    if (k == A(0)) return;
    if (!isfinite(st[6 + 2 * pair] - st[7 + 2 * pair]) || !isfinite(st[2 * s1 + 1]) ||
        !isfinite(st[2 * s2 + 1])) {
      n1 = n2 = true;
      k = A(0);
    }
  };
  check(c.kan, 0, 0, 1, c.nan_a, c.nan_n);
  check(c.kax, 1, 0, 2, c.nan_a, c.nan_x);
  check(c.knx, 2, 1, 2, c.nan_n, c.nan_x);
  return c;
}

// d = d + v with one rounding to T; atomic (several extras may add into one AR row).
__device__ __forceinline__ void atomic_add_to(float* p, float v) { atomicAdd(p, v); }
__device__ __forceinline__ void atomic_add_to(double* p, double v) { atomicAdd(p, v); }
template <typename H>  // __half / __nv_bfloat16: a 16-bit CAS loop, float sum, one rounding
__device__ __forceinline__ void atomic_add_to(H* p, float v) {
  unsigned short* w = reinterpret_cast<unsigned short*>(p);
  unsigned short old = *w, seen;
  do {
    seen = old;
    H cur, nxt;
    memcpy(&cur, &seen, sizeof cur);
    store(&nxt, to_acc(cur) + v);
    unsigned short bits;
    memcpy(&bits, &nxt, sizeof bits);
    old = atomicCAS(w, seen, bits);
  } while (old != seen);
}

// The gradient columns [c0, c0 + kBwdCols) (stride kBwdThreads) of one triple. ACC_A: add the
// AR-side gradient into da atomically (an extra: c.ca == 0, ta = kIgnored) instead of storing.
template <typename T, bool ACC_A>
__device__ __forceinline__ void triple_bwd_cols(const T* a, const T* n, const T* x, T* da, T* dn,
                                                T* dx, int64_t V, int64_t c0, int64_t ta,
                                                int64_t tm, typename AccT<T>::type eps,
                                                const Coef<typename AccT<T>::type>& c,
                                                const typename AccT<T>::type* st) {
  using A = typename AccT<T>::type;
  const A e0 = eps / A(V), hit = A(1) - eps;
  const bool any_a = c.kan != A(0) || c.kax != A(0) || c.nan_a;
#pragma unroll
  for (int u = 0; u < kBwdPerThread; ++u) {
    const int64_t i = c0 + int64_t(u) * kBwdThreads;
    if (i >= V) break;
    const A ta_ = A(load(a + i)) - st[0], tn_ = A(load(n + i)) - st[2],
            tx_ = A(load(x + i)) - st[4];
    const A pa = dexp(ta_) * st[1], pn = dexp(tn_) * st[3], px = dexp(tx_) * st[5];
    const A dan = ta_ - tn_, dax = ta_ - tx_, dnx = tn_ - tx_;
    // CE terms (the target entries formed in A before the final rounding)
    A ga = c.ca * (pa - e0 - (i == ta ? hit : A(0)));
    A gn = c.cn * (pn - e0 - (i == tm ? hit : A(0)));
    A gx = c.cx * (px - e0 - (i == tm ? hit : A(0)));
    if (c.kan != A(0)) {
      ga += c.kan * (mul_nz(pa, dan - st[6] + A(1)) - pn);
      gn += c.kan * (mul_nz(pn, st[7] + A(1) - dan) - pa);
    }
    if (c.kax != A(0)) {
      ga += c.kax * (mul_nz(pa, dax - st[8] + A(1)) - px);
      gx += c.kax * (mul_nz(px, st[9] + A(1) - dax) - pa);
    }
    if (c.knx != A(0)) {
      gn += c.knx * (mul_nz(pn, dnx - st[10] + A(1)) - px);
      gx += c.knx * (mul_nz(px, st[11] + A(1) - dnx) - pn);
    }
    if (c.nan_a) ga = A(NAN);
    if (c.nan_n) gn = A(NAN);
    if (c.nan_x) gx = A(NAN);
    if constexpr (ACC_A) {
      if (any_a) atomic_add_to(da + i, ga);
    } else {
      store(da + i, ga);
    }
    store(dn + i, gn);
    store(dx + i, gx);
  }
}

template <typename T>
__device__ __forceinline__ void fill_cols(T* d, int64_t V, int64_t c0,
                                          typename AccT<T>::type val) {
#pragma unroll
  for (int u = 0; u < kBwdPerThread; ++u) {
    const int64_t i = c0 + int64_t(u) * kBwdThreads;
    if (i >= V) break;
    store(d + i, val);
  }
}

template <typename T>
__global__ void __launch_bounds__(kBwdThreads) rows_bwd_ar_kernel(const JanusRowsArgs g) {
  using A = typename AccT<T>::type;
  const Rows<T> v{g};
  const int64_t r = blockIdx.x, V = g.vocab, m = g.first[r];
  const int64_t c0 = int64_t(blockIdx.y) * kBwdCols + threadIdx.x;
  const int64_t ta = target_col(g.ar_target[r], V, g.ignore_index);
  const int64_t tm = m >= 0 ? target_col(g.masked_target[m], V, g.ignore_index) : kIgnored;
  const A eps = A(g.label_smoothing), g_ar = static_cast<const A*>(g.grad_ar)[r];
  T* da = v.d(g.d_ar, r);
  if (m >= 0 && tm >= 0) {
    const A* st = v.m_st(m);
    const Coef<A> c = make_coef(static_cast<const A*>(g.grad_masked) + kMTerms * m,
                                ta >= 0 ? g_ar : A(0), ta == kInvalid, st);
    triple_bwd_cols<T, false>(v.ar(r), v.nar(m), v.aux(m), da, v.d(g.d_nar, m),
                              v.d(g.d_aux, m), V, c0, ta, tm, eps, c, st);
    return;
  }
  if (m >= 0) {  // the primary's target is ignored (zero rows) or invalid (NaN rows)
    const A fill = tm == kIgnored ? A(0) : A(NAN);
    fill_cols(v.d(g.d_nar, m), V, c0, fill);
    fill_cols(v.d(g.d_aux, m), V, c0, fill);
  }
  if (ta < 0) {
    fill_cols(da, V, c0, ta == kIgnored ? A(0) : A(NAN));
    return;
  }
  const A* st = v.ar_st(r);
  const A mx = st[0], iz = st[1], off = eps / A(V), hit = A(1) - eps;
  const T* ar = v.ar(r);
#pragma unroll
  for (int u = 0; u < kBwdPerThread; ++u) {
    const int64_t i = c0 + int64_t(u) * kBwdThreads;
    if (i >= V) break;
    store(da + i, ce_grad(A(load(ar + i)), i, ta, mx, iz, g_ar, off, hit));
  }
}

template <typename T>
__global__ void __launch_bounds__(kBwdThreads) rows_bwd_extra_kernel(const JanusRowsArgs g) {
  using A = typename AccT<T>::type;
  const Rows<T> v{g};
  const int64_t m = blockIdx.x, V = g.vocab, r = g.ar_kl_rows[m];
  const bool idx_ok = r >= 0 && r < g.n_ar;
  if (idx_ok && g.first[r] == m) return;  // a primary: kernel A
  const int64_t c0 = int64_t(blockIdx.y) * kBwdCols + threadIdx.x;
  const int64_t tm = target_col(g.masked_target[m], V, g.ignore_index);
  if (!idx_ok || tm < 0) {
    const A fill = idx_ok && tm == kIgnored ? A(0) : A(NAN);
    fill_cols(v.d(g.d_nar, m), V, c0, fill);
    fill_cols(v.d(g.d_aux, m), V, c0, fill);
    return;
  }
  const A* st = v.m_st(m);
  const Coef<A> c = make_coef(static_cast<const A*>(g.grad_masked) + kMTerms * m, A(0), false,
                              st);
  triple_bwd_cols<T, true>(v.ar(r), v.nar(m), v.aux(m), v.d(g.d_ar, r), v.d(g.d_nar, m),
                           v.d(g.d_aux, m), V, c0, kIgnored, tm, A(g.label_smoothing), c, st);
}

// ---------------------------------------------------------------------------- launchers
template <typename T>
struct RowsFwd {
  static cudaError_t run(const JanusRowsArgs* a, cudaStream_t s) {
    if (a->n_ar > 0)
      JANUS_LAUNCH(rows_fwd_ar_kernel<T>, dim3(unsigned(a->n_ar)), dim3(kFwdThreads), 0, s, *a);
    if (a->n_masked > 0)
      JANUS_LAUNCH(rows_fwd_extra_kernel<T>, dim3(unsigned(a->n_masked)), dim3(kFwdThreads), 0,
                   s, *a);
    return cudaGetLastError();
  }
};

template <typename T>
struct RowsBwd {
  static cudaError_t run(const JanusRowsArgs* a, cudaStream_t s) {
    const unsigned cb = bwd_col_blocks(a->vocab);
    if (a->n_ar > 0) {
      JANUS_LAUNCH(rows_bwd_ar_kernel<T>, dim3(unsigned(a->n_ar), cb), dim3(kBwdThreads), 0, s,
                   *a);
      const cudaError_t e = cudaGetLastError();
      if (e != cudaSuccess) return e;
    }
    // after A on the same stream: the extras add into the d_ar rows A wrote
    if (a->n_masked > 0)
      JANUS_LAUNCH(rows_bwd_extra_kernel<T>, dim3(unsigned(a->n_masked), cb), dim3(kBwdThreads),
                   0, s, *a);
    return cudaGetLastError();
  }
};

}  // namespace

extern "C" {

cudaError_t janus_rows_fwd(const JanusRowsArgs* a, cudaStream_t stream) {
  if (!launchable(a->n_ar, a->vocab) || !launchable(a->n_masked, a->vocab))
    return cudaErrorInvalidValue;
  return dispatch<RowsFwd>(a->dtype, a, stream);
}

cudaError_t janus_rows_bwd(const JanusRowsArgs* a, cudaStream_t stream) {
  if (!launchable(a->n_ar, a->vocab) || !launchable(a->n_masked, a->vocab))
    return cudaErrorInvalidValue;
  return dispatch<RowsBwd>(a->dtype, a, stream);
}

}  // extern "C"
