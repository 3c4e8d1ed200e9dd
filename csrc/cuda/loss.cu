// CUDA kernels for the fused row losses: symmetric KL and JANUS label-smoothed cross entropy,
// forward (per-row loss + statistics) and backward (recompute p, q from the logits). The math,
// the saved statistics and the special-value rules are those of csrc/cpu/loss.cpp (read its
// header comment); this file only maps them onto the GPU:
//   * forward: one block per row; each thread keeps an online state (running maxima, sums) over
//     a strided slice of the row, four elements per step with one rescale per step; states are
//     merged with warp shuffles, then across warps in shared memory. Merging two KL states
//     re-shifts their A sums to the common shift c = m_x - m_y: A + (c_i - c) Z_i.
//   * backward: a (row, column chunk) grid, elementwise, coalesced loads and stores.
// The CE target is checked on the device: an out-of-range target gives a NaN loss (raising
// would need a host sync). No torch headers: see loss_launch.h for the entry points.
// The kernels compile with nvcc and, unchanged, with g++ against the CPU emulation
// (csrc/cuda_emu/, janus_compat.cuh: launches through JANUS_LAUNCH), which the tests run.
#include "loss_common.cuh"

namespace {

using namespace janus_loss_cuda;

// ============================================================ symmetric KL
template <typename A>
struct KLState {
  A mx, my;          // raw running maxima of x' = x/T and y' = y/T
  A zx, ax, zy, ay;  // sum e^{x'-mx}, sum e^{x'-mx} (d - c), same for y; c = safe(mx) - safe(my)
};

// Raise the maxima to (nx, ny) (raw values, >= the current ones): rescale and re-shift.
template <typename A>
__device__ __forceinline__ void kl_raise(KLState<A>& s, A nx, A ny) {
  const A ox = safe(s.mx), oy = safe(s.my), sx = safe(nx), sy = safe(ny);
  const A dc = (ox - oy) - (sx - sy);
  if (s.zx != A(0)) {
    const A a = dexp(ox - sx);
    s.ax = a * (s.ax + dc * s.zx);
    s.zx *= a;
  }
  if (s.zy != A(0)) {
    const A a = dexp(oy - sy);
    s.ay = a * (s.ay + dc * s.zy);
    s.zy *= a;
  }
  s.mx = nx;
  s.my = ny;
}

template <typename A>
__device__ __forceinline__ void kl_merge(KLState<A>& s, KLState<A> o) {
  const A nx = fmax(s.mx, o.mx), ny = fmax(s.my, o.my);
  kl_raise(s, nx, ny);
  kl_raise(o, nx, ny);
  s.zx += o.zx; s.ax += o.ax; s.zy += o.zy; s.ay += o.ay;
}

template <typename A>
__device__ __forceinline__ KLState<A> kl_shfl(const KLState<A>& s, int lane_mask) {
  KLState<A> o;
  o.mx = __shfl_xor_sync(0xffffffffu, s.mx, lane_mask);
  o.my = __shfl_xor_sync(0xffffffffu, s.my, lane_mask);
  o.zx = __shfl_xor_sync(0xffffffffu, s.zx, lane_mask);
  o.ax = __shfl_xor_sync(0xffffffffu, s.ax, lane_mask);
  o.zy = __shfl_xor_sync(0xffffffffu, s.zy, lane_mask);
  o.ay = __shfl_xor_sync(0xffffffffu, s.ay, lane_mask);
  return o;
}

template <typename T>
__global__ void __launch_bounds__(kFwdThreads, 1)
symkl_fwd_kernel(const T* __restrict__ x, const T* __restrict__ y,
                 const uint8_t* __restrict__ mask, typename AccT<T>::type* __restrict__ loss,
                 typename AccT<T>::type* __restrict__ stats, int64_t V, int64_t sx, int64_t sy,
                 typename AccT<T>::type it) {
  using A = typename AccT<T>::type;
  const int64_t row = blockIdx.x;
  A* st = stats + row * 6;
  if (mask != nullptr && mask[row] == 0) {  // unselected row: never read
    if (threadIdx.x == 0) {
      loss[row] = A(0);
      for (int k = 0; k < 6; ++k) st[k] = A(0);
    }
    return;
  }
  const T* xr = x + row * sx;
  const T* yr = y + row * sy;
  KLState<A> s{-INFINITY, -INFINITY, 0, 0, 0, 0};
  for (int64_t base = threadIdx.x; base < V; base += int64_t(kFwdThreads) * kUnroll) {
    A xv[kUnroll], yv[kUnroll];
    A cx = -INFINITY, cy = -INFINITY;
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = base + int64_t(u) * kFwdThreads;
      xv[u] = i < V ? A(load(xr + i)) : A(-INFINITY);  // raw logits: scaled in the fma below
      yv[u] = i < V ? A(load(yr + i)) : A(-INFINITY);
      cx = fmax(cx, xv[u]);
      cy = fmax(cy, yv[u]);
    }
    // max(x) * it == max(x * it) (it > 0, rounding is monotone)
    kl_raise(s, fmax(s.mx, cx * it), fmax(s.my, cy * it));
    const A mx = safe(s.mx), my = safe(s.my);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const A tx = dfma(xv[u], it, -mx), ty = dfma(yv[u], it, -my);
      const A ex = dexp(tx), ey = dexp(ty), d = tx - ty;
      s.zx += ex;
      s.zy += ey;
      s.ax += mul_nz(ex, d);  // 0 * inf = 0: -inf on the exp side (and padding) adds nothing
      s.ay += mul_nz(ey, d);
    }
  }
  const KLState<A> t = block_merge(
      s, [](KLState<A>& a, const KLState<A>& b) { kl_merge(a, b); },
      [](const KLState<A>& a, int m) { return kl_shfl(a, m); });
  if (threadIdx.x == 0) {
    const A sp = t.ax / t.zx, sq = t.ay / t.zy;
    loss[row] = A(0.5) * (sp - sq);
    st[0] = safe(t.mx); st[1] = A(1) / t.zx;
    st[2] = safe(t.my); st[3] = A(1) / t.zy;
    st[4] = sp; st[5] = sq;
  }
}

template <typename T>
__global__ void __launch_bounds__(kBwdThreads)
symkl_bwd_kernel(const typename AccT<T>::type* __restrict__ grad, const T* __restrict__ x,
                 const T* __restrict__ y, const typename AccT<T>::type* __restrict__ stats,
                 const uint8_t* __restrict__ mask, T* __restrict__ dx, T* __restrict__ dy,
                 int64_t V, int64_t sx, int64_t sy, typename AccT<T>::type it) {
  using A = typename AccT<T>::type;
  const int64_t row = blockIdx.x;
  const int64_t c0 = int64_t(blockIdx.y) * kBwdThreads * kBwdPerThread + threadIdx.x;
  T* gx = dx + row * V;
  T* gy = dy + row * V;
  const A* st = stats + row * 6;
  const bool keep = mask == nullptr || mask[row] != 0;
  const A mx = st[0], izx = st[1], my = st[2], izy = st[3], sp = st[4], sq = st[5];
  // infinite / undefined loss: the gradient is undefined -> NaN rows
  const bool ok = isfinite(sp - sq) && isfinite(izx) && isfinite(izy);
  const A a = A(0.5) * it * grad[row];
#pragma unroll
  for (int u = 0; u < kBwdPerThread; ++u) {
    const int64_t i = c0 + int64_t(u) * kBwdThreads;
    if (i >= V) break;
    A vx = 0, vy = 0;
    if (!keep) {
      vx = vy = A(0);
    } else if (!ok) {
      vx = vy = A(NAN);
    } else {
      const A tx = dfma(A(load(x + row * sx + i)), it, -mx);
      const A ty = dfma(A(load(y + row * sy + i)), it, -my);
      const A p = dexp(tx) * izx, q = dexp(ty) * izy, d = tx - ty;
      vx = a * (mul_nz(p, d - sp + A(1)) - q);
      vy = a * (mul_nz(q, A(1) + sq - d) - p);
    }
    store(gx + i, vx);
    store(gy + i, vy);
  }
}

// ================================================================ cross entropy
template <typename T, bool SMOOTH>
__global__ void __launch_bounds__(kFwdThreads, 1)
ce_fwd_kernel(const T* __restrict__ x, const int64_t* __restrict__ target,
              typename AccT<T>::type* __restrict__ loss, typename AccT<T>::type* __restrict__ stats,
              int64_t V, int64_t sx, int64_t ignore_index, typename AccT<T>::type eps) {
  using A = typename AccT<T>::type;
  const int64_t row = blockIdx.x;
  const int64_t t = target[row];
  if (t == ignore_index || t < 0 || t >= V) {  // ignored (0) or invalid (NaN) row: not read
    if (threadIdx.x == 0) {
      loss[row] = t == ignore_index ? A(0) : A(NAN);
      stats[2 * row] = stats[2 * row + 1] = A(0);
    }
    return;
  }
  ce_row_fwd_block<T, SMOOTH>(x + row * sx, V, t, eps, loss + row, stats + 2 * row);
}

template <typename T>
__global__ void __launch_bounds__(kBwdThreads)
ce_bwd_kernel(const typename AccT<T>::type* __restrict__ grad, const T* __restrict__ x,
              const int64_t* __restrict__ target, const typename AccT<T>::type* __restrict__ stats,
              T* __restrict__ dx, int64_t V, int64_t sx, int64_t ignore_index,
              typename AccT<T>::type eps) {
  using A = typename AccT<T>::type;
  const int64_t row = blockIdx.x;
  const int64_t c0 = int64_t(blockIdx.y) * kBwdThreads * kBwdPerThread + threadIdx.x;
  const int64_t t = target[row];
  const bool valid = t != ignore_index && t >= 0 && t < V;
  const A m = stats[2 * row], iz = stats[2 * row + 1], g = grad[row];
  const A off = eps / A(V), hit = A(1) - eps;
#pragma unroll
  for (int u = 0; u < kBwdPerThread; ++u) {
    const int64_t i = c0 + int64_t(u) * kBwdThreads;
    if (i >= V) break;
    const A v = valid ? ce_grad(A(load(x + row * sx + i)), i, t, m, iz, g, off, hit) : A(0);
    store(dx + row * V + i, v);
  }
}

// ---------------------------------------------------------------- launchers
template <typename T>
struct SymKLFwd {
  static cudaError_t run(const JanusSymKLArgs* a, cudaStream_t s) {
    using A = typename AccT<T>::type;
    JANUS_LAUNCH(symkl_fwd_kernel<T>, dim3(unsigned(a->rows)), dim3(kFwdThreads), 0, s,
                 static_cast<const T*>(a->x), static_cast<const T*>(a->y), a->row_mask,
                 static_cast<A*>(a->loss), static_cast<A*>(a->stats), a->vocab, a->stride_x,
                 a->stride_y, A(a->inv_temperature));
    return cudaGetLastError();
  }
};

template <typename T>
struct SymKLBwd {
  static cudaError_t run(const JanusSymKLArgs* a, cudaStream_t s) {
    using A = typename AccT<T>::type;
    JANUS_LAUNCH(symkl_bwd_kernel<T>, dim3(unsigned(a->rows), bwd_col_blocks(a->vocab)),
                 dim3(kBwdThreads), 0, s, static_cast<const A*>(a->grad),
                 static_cast<const T*>(a->x), static_cast<const T*>(a->y),
                 static_cast<const A*>(a->stats), a->row_mask, static_cast<T*>(a->dx),
                 static_cast<T*>(a->dy), a->vocab, a->stride_x, a->stride_y,
                 A(a->inv_temperature));
    return cudaGetLastError();
  }
};

template <typename T>
struct CEFwd {
  static cudaError_t run(const JanusCEArgs* a, cudaStream_t s) {
    using A = typename AccT<T>::type;
    const bool smooth = a->label_smoothing > 0;
    auto k = smooth ? ce_fwd_kernel<T, true> : ce_fwd_kernel<T, false>;
    JANUS_LAUNCH(k, dim3(unsigned(a->rows)), dim3(kFwdThreads), 0, s,
                 static_cast<const T*>(a->x), a->target, static_cast<A*>(a->loss),
                 static_cast<A*>(a->stats), a->vocab, a->stride_x, a->ignore_index,
                 A(smooth ? a->label_smoothing : 0.0));
    return cudaGetLastError();
  }
};

template <typename T>
struct CEBwd {
  static cudaError_t run(const JanusCEArgs* a, cudaStream_t s) {
    using A = typename AccT<T>::type;
    JANUS_LAUNCH(ce_bwd_kernel<T>, dim3(unsigned(a->rows), bwd_col_blocks(a->vocab)),
                 dim3(kBwdThreads), 0, s, static_cast<const A*>(a->grad),
                 static_cast<const T*>(a->x), a->target, static_cast<const A*>(a->stats),
                 static_cast<T*>(a->dx), a->vocab, a->stride_x, a->ignore_index,
                 A(a->label_smoothing));
    return cudaGetLastError();
  }
};

}  // namespace

extern "C" {

cudaError_t janus_symkl_fwd(const JanusSymKLArgs* a, cudaStream_t stream) {
  if (!launchable(a->rows, a->vocab)) return cudaErrorInvalidValue;
  return a->rows == 0 ? cudaSuccess : dispatch<SymKLFwd>(a->dtype, a, stream);
}

cudaError_t janus_symkl_bwd(const JanusSymKLArgs* a, cudaStream_t stream) {
  if (!launchable(a->rows, a->vocab)) return cudaErrorInvalidValue;
  return a->rows == 0 ? cudaSuccess : dispatch<SymKLBwd>(a->dtype, a, stream);
}

cudaError_t janus_ce_fwd(const JanusCEArgs* a, cudaStream_t stream) {
  if (!launchable(a->rows, a->vocab)) return cudaErrorInvalidValue;
  return a->rows == 0 ? cudaSuccess : dispatch<CEFwd>(a->dtype, a, stream);
}

cudaError_t janus_ce_bwd(const JanusCEArgs* a, cudaStream_t stream) {
  if (!launchable(a->rows, a->vocab)) return cudaErrorInvalidValue;
  return a->rows == 0 ? cudaSuccess : dispatch<CEBwd>(a->dtype, a, stream);
}

}  // extern "C"
