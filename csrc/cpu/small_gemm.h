// Register-tiled fp32 GEMM for the small attention tiles (rows and keys <= ~128, K <= 256),
// inlined into the kernels: C (M x N) (+)= A (M x K) B (K x N).
//
// Why not cpublas::brgemm here: at IWSLT-sized batches a (batch, head) item is a few 48 x 36 x
// 64 products, where brgemm's fixed costs (kernel-cache lookup per call, a B operand that must
// be row-major, so the backward transposes Q, dO and dQ of every row block) cost as much as
// the FLOPs. This kernel reads its operands through row pointers, so
//   * A may be used transposed for free (A[m][k] = At[k][m]: a broadcast reads either way),
//     which gives dV += P^T dO and dK += dS^T Q straight from the row-major P and dS;
//   * rows may come from anywhere (the two streams of a sample, strided tensors) without a
//     gather copy.
// B is always read along N with vector loads (the only layout a broadcast-FMA kernel needs).
//
// The micro-tile is kMR rows x 2 vectors (AVX-512: 8 x 32, 16 accumulators; AVX2: 6 x 16,
// 12 of the 16 ymm registers), each k step 2 loads of B, kMR broadcasts of A and 2 kMR FMAs;
// on AVX-512 the last strip may take 3 vectors (N = 33..48: the IWSLT key counts).
// Tails: the last N vector is loaded / stored with a count; M tails use a smaller tile.
#pragma once
#include <ATen/cpu/vec/vec.h>

#include <cstdint>

#include <immintrin.h>

namespace janus_cpu {

// How A is read: rows (A[m][k] = a[m][k]) or transposed (A[m][k] = a[k][m]); a holds
// pointers to the rows of the stored matrix either way.
enum class AMode { kRows, kTransposed };

// The next work item's rows, prefetched into L2 a few lines per GEMM tile while the current
// item computes. At IWSLT-sized items (~90 KB of rows each, a few us of compute) the kernels
// otherwise wait on the first touch of every row; a burst of prefetches at the start of an
// item did not help (it stalls on the line-fill buffers just as the loads would), spread over
// the tiles it took 5% off the backward. 16 lines per tile measured best (8: 3%, 32: none).
constexpr int kPrefetchLinesPerTile = 16;

struct PrefetchQueue {
  static constexpr int kMaxRanges = 32;
  const char* ptr[kMaxRanges];
  int64_t bytes[kMaxRanges];
  int count = 0, idx = 0;
  int64_t off = 0;
  void clear() { count = idx = 0; off = 0; }
  void add(const void* p, int64_t n) {   // ranges past kMaxRanges are not prefetched
    if (count < kMaxRanges && n > 0) {
      ptr[count] = static_cast<const char*>(p);
      bytes[count++] = n;
    }
  }
  void step(int lines) {
    for (; lines > 0 && idx < count; --lines) {
      _mm_prefetch(ptr[idx] + off, _MM_HINT_T1);
      off += 64;
      if (off >= bytes[idx]) { ++idx; off = 0; }
    }
  }
};

// This thread's queue (filled by the kernels' look-ahead, drained by the GEMM tiles).
inline PrefetchQueue& prefetch_queue() {
  thread_local PrefetchQueue q;
  return q;
}

namespace small_gemm_detail {

using Vec = at::vec::Vectorized<float>;
constexpr int kW = Vec::size();
constexpr int kMR = kW == 16 ? 8 : 6;
constexpr bool kNV3 = kW == 16;   // 8 x 3 vectors fit AVX-512's registers, not AVX2's

// One MR x (NV vectors) tile at (m0, n0); the last vector holds `last` columns (1..kW), read
// with a count when kTail.
// The last B vector's load when it holds fewer than kW columns: the mask built once per tile.
// (at::vec's loadu(ptr, count) rebuilds it per call; inside the k loop that made GCC keep a
// stack copy of every accumulator, stored on every k step: the S and dP GEMMs of the small
// backward, whose N is the key count, ran 2.2x slower than the same GEMM rounded up.)
struct TailLoad {
#if defined(CPU_CAPABILITY_AVX512)
  __mmask16 mask;
  explicit TailLoad(int n) : mask(static_cast<__mmask16>((1u << n) - 1)) {}
  Vec operator()(const float* p) const { return Vec(_mm512_maskz_loadu_ps(mask, p)); }
  void store(const Vec& x, float* p) const { _mm512_mask_storeu_ps(p, mask, x); }
#elif defined(CPU_CAPABILITY_AVX2)
  __m256i mask;
  explicit TailLoad(int n)
      : mask(_mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))) {}
  Vec operator()(const float* p) const { return Vec(_mm256_maskload_ps(p, mask)); }
  void store(const Vec& x, float* p) const { _mm256_maskstore_ps(p, mask, x); }
#else
  int n;
  explicit TailLoad(int n_) : n(n_) {}
  Vec operator()(const float* p) const { return Vec::loadu(p, n); }
  void store(const Vec& x, float* p) const { x.store(p, n); }
#endif
};

template <AMode kA, int MR, int NV, bool kTail>
__attribute__((always_inline)) inline void tile_body(int m0, int n0, int K, int last,
                                                     const float* const* a,
                                                     const float* const* b, float* const* c,
                                                     bool accumulate) {
  Vec acc[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) acc[i][v] = Vec(0.f);
  const float* arow[MR];   // kRows: this tile's A rows, kept in registers across k
  if constexpr (kA == AMode::kRows)
    for (int i = 0; i < MR; ++i) arow[i] = a[m0 + i];
  const TailLoad tail_load(last);
  for (int k = 0; k < K; ++k) {
    const float* brow = b[k] + n0;
    Vec bv[NV];
    for (int v = 0; v < NV; ++v)
      bv[v] = (kTail && v == NV - 1) ? tail_load(brow + v * kW) : Vec::loadu(brow + v * kW);
    for (int i = 0; i < MR; ++i) {
      const Vec av(kA == AMode::kRows ? arow[i][k] : a[k][m0 + i]);
      for (int v = 0; v < NV; ++v) acc[i][v] = at::vec::fmadd(av, bv[v], acc[i][v]);
    }
  }
  for (int i = 0; i < MR; ++i) {
    float* crow = c[m0 + i] + n0;
    for (int v = 0; v < NV; ++v) {
      const bool part = kTail && v == NV - 1;
      Vec r = acc[i][v];
      if (accumulate) r = r + (part ? tail_load(crow + v * kW) : Vec::loadu(crow + v * kW));
      if (part) tail_load.store(r, crow + v * kW);
      else r.store(crow + v * kW);
    }
  }
}

// The tail choice is made once per tile, not per k step: with it inside the loop GCC split
// the loop around the masked load and then kept (and stored, every step) a memory copy of
// the accumulators.
template <AMode kA, int MR, int NV>
__attribute__((always_inline)) inline void tile(int m0, int n0, int K, int last,
                                                const float* const* a, const float* const* b,
                                                float* const* c, bool accumulate,
                                                PrefetchQueue& pq) {
  pq.step(kPrefetchLinesPerTile);
  if (last < kW) tile_body<kA, MR, NV, true>(m0, n0, K, last, a, b, c, accumulate);
  else tile_body<kA, MR, NV, false>(m0, n0, K, last, a, b, c, accumulate);
}

// All M for one column strip: whole MR tiles, then the remainder with a smaller tile.
template <AMode kA, int NV, int MR = kMR>
inline void strip(int M, int n0, int K, int last, const float* const* a, const float* const* b,
                  float* const* c, bool accumulate, PrefetchQueue& pq) {
  int m0 = 0;
  for (; m0 + MR <= M; m0 += MR) tile<kA, MR, NV>(m0, n0, K, last, a, b, c, accumulate, pq);
  switch (M - m0) {   // MR <= 8
    case 7: tile<kA, 7, NV>(m0, n0, K, last, a, b, c, accumulate, pq); break;
    case 6: tile<kA, 6, NV>(m0, n0, K, last, a, b, c, accumulate, pq); break;
    case 5: tile<kA, 5, NV>(m0, n0, K, last, a, b, c, accumulate, pq); break;
    case 4: tile<kA, 4, NV>(m0, n0, K, last, a, b, c, accumulate, pq); break;
    case 3: tile<kA, 3, NV>(m0, n0, K, last, a, b, c, accumulate, pq); break;
    case 2: tile<kA, 2, NV>(m0, n0, K, last, a, b, c, accumulate, pq); break;
    case 1: tile<kA, 1, NV>(m0, n0, K, last, a, b, c, accumulate, pq); break;
    default: break;
  }
}

}  // namespace small_gemm_detail

// C (M x N) = A B, or C += A B when accumulate. a: M row pointers (kRows) or K row pointers
// of the stored A^T (kTransposed); b: K row pointers (each row N floats); c: M row pointers.
// K = 0 gives C = 0 (or C unchanged when accumulating).
template <AMode kA>
inline void small_gemm(int M, int N, int K, const float* const* a, const float* const* b,
                       float* const* c, bool accumulate) {
  using namespace small_gemm_detail;
  // the thread_local looked up once per GEMM: in a shared library each lookup is a call to
  // __tls_get_addr, which once per tile cost ~4% of the small backward
  PrefetchQueue& pq = prefetch_queue();
  int n0 = 0;
  if constexpr (kNV3) {
    // AVX-512: strips of 4 vectors x 6 rows (24 accumulators) where N allows: one broadcast of
    // A feeds 4 FMAs (2 in the 8 x 2 tile), which the load ports need at K ~ 48 (measured
    // against brgemm: 8 x 2 ran N = 64 products 20% slower, 6 x 4 as fast)
    for (; n0 + 4 * kW <= N; n0 += 4 * kW) strip<kA, 4, 6>(M, n0, K, kW, a, b, c, accumulate, pq);
  }
  for (; n0 + 2 * kW <= N; n0 += 2 * kW) {
    // AVX-512 (32 registers): a tail of up to one vector rides along as a third vector
    // (24 accumulators), instead of a pass of its own over every row and k
    if constexpr (kNV3) {
      if (N - n0 > 2 * kW && N - n0 <= 3 * kW) {
        strip<kA, 3>(M, n0, K, N - n0 - 2 * kW, a, b, c, accumulate, pq);
        return;
      }
    }
    strip<kA, 2>(M, n0, K, kW, a, b, c, accumulate, pq);
  }
  const int rest = N - n0;
  if (rest > kW) strip<kA, 2>(M, n0, K, rest - kW, a, b, c, accumulate, pq);
  else if (rest > 0) strip<kA, 1>(M, n0, K, rest, a, b, c, accumulate, pq);
}

// Prefetches rows [0, n) of cols floats each into L1: a broadcast-FMA kernel reads its A rows
// a few bytes at a time from several rows at once, so rows that come cold from memory (the
// forward's Q, the backward's Q and dO: first touched here) would miss one line at a time; a
// burst of prefetches overlaps those misses.
inline void prefetch_rows(const float* const* rows, int n, int cols) {
  for (int r = 0; r < n; ++r)
    for (int c = 0; c < cols; c += 16)
      _mm_prefetch(reinterpret_cast<const char*>(rows[r] + c), _MM_HINT_T0);
}

// Row pointers of a strided matrix: rows[r] = base + r * ld for r < n.
template <typename P>
inline void strided_rows(P* base, int64_t ld, int n, P** rows) {
  for (int r = 0; r < n; ++r) rows[r] = base + r * ld;
}

}  // namespace janus_cpu
