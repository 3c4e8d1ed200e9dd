// Device helpers shared by the CUDA loss kernels (loss.cu: symmetric KL / cross entropy rows;
// janus_loss.cu: the fused JANUS criterion rows). Torch-free; compiles with nvcc and with g++
// against the CPU emulation (janus_compat.cuh). Header-only: inline functions and templates
// (a named namespace; nvcc's kernel stubs cannot name kernel parameter types that live in an
// anonymous namespace nested in another one).
#pragma once
#include <math.h>
#include <stdint.h>

#include "janus_compat.cuh"
#include "loss_launch.h"

namespace janus_loss_cuda {

constexpr int kFwdThreads = 256;  // forward: one row (or row triple) per block
constexpr int kWarps = kFwdThreads / 32;
constexpr int kUnroll = 4;        // elements per thread per step (one rescale per step)
constexpr int kBwdThreads = 256;
constexpr int kBwdPerThread = 4;  // a backward block covers 1024 columns of one row
constexpr int64_t kBwdCols = int64_t(kBwdThreads) * kBwdPerThread;

// Accumulation type: float for float/half/bfloat16 logits, double for double.
template <typename T> struct AccT { using type = float; };
template <> struct AccT<double> { using type = double; };

__device__ __forceinline__ float load(const float* p) { return __ldg(p); }
__device__ __forceinline__ double load(const double* p) { return __ldg(p); }
__device__ __forceinline__ float load(const __half* p) { return __half2float(__ldg(p)); }
__device__ __forceinline__ float load(const __nv_bfloat16* p) {
  return __bfloat162float(__ldg(p));
}
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(double* p, double v) { *p = v; }
__device__ __forceinline__ void store(__half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

__device__ __forceinline__ float dexp(float v) { return expf(v); }
__device__ __forceinline__ double dexp(double v) { return exp(v); }
// x * it - m with one rounding: explicit, since nvcc contracts it into an fma by default and g++
// (the emulation build, no -mfma) would not; x * it alone loses ~1 ulp of |x * it| (5e-4 at 1e4).
__device__ __forceinline__ float dfma(float a, float b, float c) { return fmaf(a, b, c); }
__device__ __forceinline__ double dfma(double a, double b, double c) { return fma(a, b, c); }
__device__ __forceinline__ float dlog(float v) { return logf(v); }
__device__ __forceinline__ double dlog(double v) { return log(v); }

// 0 while every value seen is -inf, so exp arguments are -inf (exp -> 0), never NaN.
template <typename A>
__device__ __forceinline__ A safe(A m) { return m == -INFINITY ? A(0) : m; }
// e * v with 0 * (+-inf or NaN) = 0: an entry with zero probability contributes nothing.
template <typename A>
__device__ __forceinline__ A mul_nz(A e, A v) { return e == A(0) ? A(0) : e * v; }

inline unsigned bwd_col_blocks(int64_t V) { return unsigned((V + kBwdCols - 1) / kBwdCols); }

// Grid limits of the launches: rows on grid.x (< 2^31), backward column blocks on grid.y.
inline bool launchable(int64_t rows, int64_t vocab) {
  return rows >= 0 && rows < (int64_t(1) << 31) && vocab > 0 &&
         (vocab + kBwdCols - 1) / kBwdCols < 65536;
}

// ------------------------------------------------------------------ block reductions
// K values per thread reduced over the block (kFwdThreads threads, all of which must call);
// every thread gets the result. Warp shuffles, then one slot per warp in shared memory. The
// trailing barrier lets the next reduction reuse the buffer.
template <typename A, int K, typename Op>
__device__ __forceinline__ void block_reduce(A (&v)[K], Op op) {
  __shared__ A part[K][kWarps];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
  for (int k = 0; k < K; ++k) {
#pragma unroll
    for (int m = 16; m > 0; m >>= 1) v[k] = op(v[k], __shfl_xor_sync(0xffffffffu, v[k], m));
    if (lane == 0) part[k][warp] = v[k];
  }
  __syncthreads();
#pragma unroll
  for (int k = 0; k < K; ++k) {
    A r = part[k][0];
    for (int w = 1; w < kWarps; ++w) r = op(r, part[k][w]);
    v[k] = r;
  }
  __syncthreads();
}

// A merge-able state (online-softmax statistics) combined over the block: warp shuffles
// (shfl(s, m) gives lane ^ m's state), then one slot per warp in shared memory, merged by
// thread 0, the only thread that gets the block's result (the others get their own state).
template <typename S, typename Merge, typename Shfl>
__device__ __forceinline__ S block_merge(S s, Merge merge, Shfl shfl) {
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) merge(s, shfl(s, m));
  __shared__ S part[kWarps];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) part[warp] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    s = part[0];
    for (int w = 1; w < kWarps; ++w) merge(s, part[w]);
  }
  return s;
}

struct MaxOp {
  template <typename A>
  __device__ __forceinline__ A operator()(A a, A b) const { return fmax(a, b); }
};
struct SumOp {
  template <typename A>
  __device__ __forceinline__ A operator()(A a, A b) const { return a + b; }
};

// ================================================================ cross entropy row
// Online state of one thread over a strided slice of a row.
template <typename A>
struct CEState {
  A m;  // raw running max
  A z;  // sum e^{x - m}
  A u;  // sum (x - safe(m))
  A n;  // number of entries in u
};

template <typename A>
__device__ __forceinline__ void ce_raise(CEState<A>& s, A nm) {
  const A o = safe(s.m), n = safe(nm);
  if (s.z != A(0)) s.z *= dexp(o - n);
  s.u += s.n * (o - n);
  s.m = nm;
}

template <typename A>
__device__ __forceinline__ void ce_merge(CEState<A>& s, CEState<A> o) {
  const A nm = fmax(s.m, o.m);
  ce_raise(s, nm);
  ce_raise(o, nm);
  s.z += o.z; s.u += o.u; s.n += o.n;
}

// Label-smoothed CE of one row with a valid target t (0 <= t < V), called by every thread of
// the block; thread 0 writes *loss and st[0..1] = [m, 1/Z] (csrc/cpu/loss.cpp).
template <typename T, bool SMOOTH>
__device__ __forceinline__ void ce_row_fwd_block(const T* xr, int64_t V, int64_t t,
                                                 typename AccT<T>::type eps,
                                                 typename AccT<T>::type* loss,
                                                 typename AccT<T>::type* st) {
  using A = typename AccT<T>::type;
  CEState<A> s{-INFINITY, 0, 0, 0};
  for (int64_t base = threadIdx.x; base < V; base += int64_t(kFwdThreads) * kUnroll) {
    A xv[kUnroll];
    A c = -INFINITY;
    int cnt = 0;
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = base + int64_t(u) * kFwdThreads;
      xv[u] = i < V ? A(load(xr + i)) : A(-INFINITY);
      cnt += i < V;
      c = fmax(c, xv[u]);
    }
    ce_raise(s, fmax(s.m, c));
    const A m = safe(s.m);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const A tt = xv[u] - m;
      s.z += dexp(tt);
      if (SMOOTH && base + int64_t(u) * kFwdThreads < V) s.u += tt;
    }
    s.n += A(cnt);
  }
  const CEState<A> r = block_merge(
      s, [](CEState<A>& a, const CEState<A>& b) { ce_merge(a, b); },
      [](const CEState<A>& a, int msk) {
        return CEState<A>{__shfl_xor_sync(0xffffffffu, a.m, msk),
                          __shfl_xor_sync(0xffffffffu, a.z, msk),
                          __shfl_xor_sync(0xffffffffu, a.u, msk),
                          __shfl_xor_sync(0xffffffffu, a.n, msk)};
      });
  if (threadIdx.x == 0) {
    const A logz = dlog(r.z), m = safe(r.m);
    A l = (A(1) - eps) * (logz - (A(load(xr + t)) - m));
    if (SMOOTH) l += eps * (logz - r.u / A(V));
    *loss = l;
    st[0] = m;
    st[1] = A(1) / r.z;
  }
}

// dCE/dx_i = g (p_i - eps/V - (1-eps)[i == t]), p_i = e^{x_i - m} / Z; the target entry is
// formed in A before the final rounding. t < 0: no target entry.
template <typename A>
__device__ __forceinline__ A ce_grad(A xi, int64_t i, int64_t t, A m, A iz, A g, A off, A hit) {
  const A p = dexp(xi - m) * iz;
  return g * (p - off - (i == t ? hit : A(0)));
}

// ---------------------------------------------------------------- dispatch helper
template <template <typename> class F, typename... Args>
inline cudaError_t dispatch(int32_t dtype, Args&&... args) {
  switch (dtype) {
    case JANUS_LOSS_F32: return F<float>::run(args...);
    case JANUS_LOSS_F16: return F<__half>::run(args...);
    case JANUS_LOSS_BF16: return F<__nv_bfloat16>::run(args...);
    case JANUS_LOSS_F64: return F<double>::run(args...);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace janus_loss_cuda
