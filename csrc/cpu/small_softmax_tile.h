// The forward's scores and softmax of a small block in one register tile (IWSLT-sized items:
// ~30 rows x ~43 keys per block, d = 64). For a block whose keys fit one chunk of at most
// kSoftmaxTileKeys keys (3 AVX-512 vectors, 6 AVX2 ones), MR rows at a time:
//   S = Q K^T                              the rows' whole key span in MR x NV accumulators
//   S[i][j] = -inf where row i does not see key j   (RowVisible)
//   m_i = scale max_j S[i][j],  P[i][j] = exp(scale S[i][j] - m_i),  l_i = sum_j P[i][j]
// P goes to the caller's scratch for the P V product; m and l are the block's final row
// statistics (one chunk: no online rescaling). softmax_chunk (attention_fwd.cpp) does the same
// for any width in passes over S stored in scratch: a masking / max pass, an exp / sum pass
// and 16-row group reductions. Measured at the IWSLT shape (the forward alone, A/B call by
// call against JANUS_CPU_SMALL_TILES_MAX_KEYS=0): 8-12% faster at the AVX2 level, the same
// time (within 0.6%) at the AVX-512 level, where the passes were already cheap.
// Rows that see none of the keys get m = -inf, P = 0 and l = 0. No score modifiers and no
// dropout here: the caller takes the general path for those.
// (A backward tile fusing S and dP with the P / dS step the same way was measured too: no
// faster than the two small GEMMs and p_ds_rows, so it is not kept.)
#pragma once
#include "attention_common.h"

#include <ATen/cpu/vec/functional.h>

namespace janus_cpu {

namespace softmax_tile_detail {

constexpr int kW = Vec::size();
// AVX-512: 3 x 16 keys (24 accumulators at 8 rows); AVX2: 6 x 8 keys, fewer rows per tile
constexpr int kMaxVecs = kW == 16 ? 3 : 6;
constexpr int rows_for(int nv) { return kW == 16 ? 8 : (nv <= 2 ? 6 : 12 / nv); }

inline float hmax(const Vec& x) {
  return at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return fast_max(a, b); }, x);
}
inline float hsum(const Vec& x) {
  return at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, x);
}

// One tile: rows [m0, m0 + MR) of the block, keys [0, NV * kW) (K^T rows are zero past the
// real keys and padded to whole vectors, so every load is a full vector).
template <int MR, int NV>
__attribute__((always_inline)) inline void tile(int m0, int K, const float* const* q,
                                                const float* const* kt, float* const* p,
                                                const RowVisible* vis, float scale,
                                                float* mrow, float* lrow) {
  Vec acc[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) acc[i][v] = Vec(0.f);
  const float* arow[MR];
  for (int i = 0; i < MR; ++i) arow[i] = q[m0 + i];
  for (int k = 0; k < K; ++k) {
    const float* brow = kt[k];
    Vec av[MR];
    for (int i = 0; i < MR; ++i) av[i] = Vec(arow[i][k]);
    for (int v = 0; v < NV; ++v) {   // one B vector live at a time (AVX2 has 16 registers)
      const Vec bv = Vec::loadu(brow + v * kW);
      for (int i = 0; i < MR; ++i) acc[i][v] = at::vec::fmadd(av[i], bv, acc[i][v]);
    }
  }
  // The accumulators leave the registers through a small buffer before the epilogue: that
  // loop (masks, reductions, exp) is too large for GCC to unroll fully, and indexing acc in
  // a loop that is not unrolled keeps it in memory for the whole k loop (stored every step).
  alignas(64) float sb[MR][NV][kW];
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) acc[i][v].store(sb[i][v]);
  const Vec neg_inf(kNegInf), vscale(scale);
  for (int i = 0; i < MR; ++i) {
    const RowVisible& rv = vis[m0 + i];
    Vec mx(kNegInf), sv[NV];
    for (int v = 0; v < NV; ++v) {
      const uint32_t bits = rv.bits(v * kW);
      sv[v] = Vec::loadu(sb[i][v]);
      if (bits != RowVisible::kAll) sv[v] = masked(sv[v], bits, neg_inf);
      mx = fast_max(mx, sv[v]);
    }
    const float m = hmax(mx) * scale;
    const Vec vm(m == kNegInf ? 0.f : m);   // a row that sees nothing: exp(-inf) = 0, no NaN
    Vec sum(0.f);
    for (int v = 0; v < NV; ++v) {
      const Vec e = (sv[v] * vscale - vm).exp_u20();
      sum += e;
      e.store(p[m0 + i] + v * kW);
    }
    mrow[m0 + i] = m;
    lrow[m0 + i] = hsum(sum);
  }
}

template <int NV>
inline void rows(int M, int K, const float* const* q, const float* const* kt, float* const* p,
                 const RowVisible* vis, float scale, float* mrow, float* lrow) {
  constexpr int MR = rows_for(NV);
  int m0 = 0;
  for (; m0 + MR <= M; m0 += MR) tile<MR, NV>(m0, K, q, kt, p, vis, scale, mrow, lrow);
  // the remaining rows one tile each, smaller (MR <= 8)
  switch (M - m0) {
    case 7: tile<7, NV>(m0, K, q, kt, p, vis, scale, mrow, lrow); break;
    case 6: tile<6, NV>(m0, K, q, kt, p, vis, scale, mrow, lrow); break;
    case 5: tile<5, NV>(m0, K, q, kt, p, vis, scale, mrow, lrow); break;
    case 4: tile<4, NV>(m0, K, q, kt, p, vis, scale, mrow, lrow); break;
    case 3: tile<3, NV>(m0, K, q, kt, p, vis, scale, mrow, lrow); break;
    case 2: tile<2, NV>(m0, K, q, kt, p, vis, scale, mrow, lrow); break;
    case 1: tile<1, NV>(m0, K, q, kt, p, vis, scale, mrow, lrow); break;
    default: break;
  }
}

}  // namespace softmax_tile_detail

// Widest key chunk (keys) the register tile serves.
constexpr int kSoftmaxTileKeys = softmax_tile_detail::kMaxVecs * Vec::size();

// P (row r at p[r], round_up(w, Vec::size()) floats written), m and l of rows r < M over keys
// [0, w) of K^T (kt[c]: row c of K^T at the chunk's first key, c < K = head dim); vis[r] is
// row r's visibility over the chunk. w <= kSoftmaxTileKeys.
inline void qk_softmax(int M, int w, int K, const float* const* q, const float* const* kt,
                       float* const* p, const RowVisible* vis, float scale, float* mrow,
                       float* lrow) {
  using namespace softmax_tile_detail;
  switch ((w + kW - 1) / kW) {
    case 1: return rows<1>(M, K, q, kt, p, vis, scale, mrow, lrow);
    case 2: return rows<2>(M, K, q, kt, p, vis, scale, mrow, lrow);
    case 3: return rows<3>(M, K, q, kt, p, vis, scale, mrow, lrow);
#if !defined(CPU_CAPABILITY_AVX512)
    case 4: return rows<4>(M, K, q, kt, p, vis, scale, mrow, lrow);
    case 5: return rows<5>(M, K, q, kt, p, vis, scale, mrow, lrow);
    case 6: return rows<6>(M, K, q, kt, p, vis, scale, mrow, lrow);
#endif
    default: TORCH_INTERNAL_ASSERT(false, "qk_softmax: ", w, " keys > ", kSoftmaxTileKeys);
  }
}


}  // namespace janus_cpu
