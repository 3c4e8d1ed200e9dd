// Device building blocks shared by attention_fwd.cu and attention_bwd.cu: row blocks of one
// stream, live key tiles from the mask descriptor, cp.async tile loads into padded shared
// memory, and warp-level tensor-core GEMMs on m16n8k16 fragments.
//
// Shared-memory tiles are row-major [rows][PITCH] with PITCH = cols + 8 elements: the 16-byte
// pad staggers consecutive rows by 4 banks, so the 8 row addresses of one ldmatrix 8x8
// matrix hit 8 different bank groups (no conflicts, no swizzle needed).
//
// Warp GEMM fragment conventions (g = lane >> 2, t = lane & 3; see janus_compat.cuh and the
// fragment tables in csrc/cuda_emu/cuda_emu_tc.h): an accumulator tile acc[n][4] of a warp
// covers 16 rows x 8n columns; acc[n][0..1] = (row g, cols 8n + 2t, +1), acc[n][2..3] = (row
// g + 8, same cols).
#pragma once
#include <math.h>

#include "attention_launch.h"
#include "janus/mask.h"
#include "janus/philox.h"
#include "janus_compat.cuh"

namespace janus {
namespace attn {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;

// Padded head dim the kernels are instantiated for (head dims up to it are zero-filled).
__host__ __device__ __forceinline__ int padded_head_dim(int d) { return d <= 64 ? 64 : 128; }

// Shared-memory copy of one sample's mask descriptor (16 ints: NUM_FIELDS padded), so the
// block-level mask queries (key ranges, tile classes) read shared memory instead of reloading
// the descriptor from global memory in every tile iteration.
constexpr int kParamInts = 16;
static_assert(NUM_FIELDS <= kParamInts, "descriptor fits its shared-memory slot");

// Tile geometry. Forward: a block holds Q (BM rows), K and V (BN keys) tiles, the key tile's
// ranks (permutation kind) and the descriptor.
template <int D>
struct FwdCfg {
  static constexpr int BM = 64;            // rows per block (16 per warp)
  static constexpr int BN = 64;            // keys per tile
  static constexpr int PITCH = D + 8;      // shared-memory row pitch (elements)
  static constexpr int kSmemBytes = (BM + 2 * BN) * PITCH * 2 + (BN + kParamInts) * 4;
};

// Backward dK/dV: a block owns BN keys (16 per warp) and walks query tiles of BM rows; it
// holds K, V, Q, dO tiles, the tile's lse, delta and per-row mask bounds (RowMask) and the
// descriptor. BM = 32 for D = 128 keeps the dK and dV accumulators (2 x 16 x D per warp) in
// registers without spills.
template <int D>
struct BwdCfg {
  static constexpr int BN = 64;
  static constexpr int BM = D <= 64 ? 64 : 32;
  static constexpr int PITCH = D + 8;
  static constexpr int kSmemBytes = (2 * BN + 2 * BM) * PITCH * 2 + 2 * BM * 4 + BM * 20 +
                                    kParamInts * 4;   // BM * 20: the RowMasks
};

// Backward dQ (the deterministic dQ pass): a block owns BM rows of one stream (16 per warp),
// like the forward, and walks the forward's key tiles; it holds Q, dO, K, V tiles, the key
// tile's ranks and the descriptor.
template <int D>
struct DqCfg {
  static constexpr int BM = 64;
  static constexpr int BN = 64;
  static constexpr int PITCH = D + 8;
  static constexpr int kSmemBytes = (2 * BM + 2 * BN) * PITCH * 2 + (BN + kParamInts) * 4;
};

__host__ __device__ __forceinline__ bool aligned16(const void* ptr) {
  return (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0;
}

// Row blocks never straddle the stream boundary: stream 0 rows [0, q_split) come first in
// blocks of BM, then stream 1 rows [q_split, Lq). One stream per block keeps the mask's
// block_ranges() exact (lo/hi are monotone within a stream only).
template <int BM>
__host__ __device__ __forceinline__ int num_row_blocks(int Lq, int q_split) {
  return (q_split + BM - 1) / BM + (Lq - q_split + BM - 1) / BM;
}

template <int BM>
__host__ __device__ __forceinline__ void row_block(int rb, int Lq, int q_split, int* i0,
                                                   int* i_end) {
  const int nb0 = (q_split + BM - 1) / BM;
  if (rb < nb0) {
    *i0 = rb * BM;
    *i_end = imin(*i0 + BM, q_split);
  } else {
    *i0 = q_split + (rb - nb0) * BM;
    *i_end = imin(*i0 + BM, Lq);
  }
}

// Largest grid.x of a launch. The kernels use one-dimensional grids, (b * heads) * tiles + tile:
// grid.y / grid.z stop at 65535, which batched inference passes in B * H.
constexpr int64_t kGridXMax = 2147483647;

// The mask view of sample b over a shared-memory copy of its descriptor (sp: kParamInts ints
// of shared memory). Ends with a barrier: every thread of the block must call it.
__device__ __forceinline__ SampleMask block_sample_mask(int32_t* sp, const int32_t* params,
                                                        const int32_t* rank,
                                                        int64_t rank_stride, int b,
                                                        int q_split, int kind, int Lq, int Lk) {
  const SampleMask g = sample_mask(params, rank, rank_stride, b, q_split, kind, Lq, Lk);
  if ((int)threadIdx.x < NUM_FIELDS) sp[threadIdx.x] = g.p[threadIdx.x];
  __syncthreads();
  SampleMask m = g;
  m.p = sp;
  return m;
}

// The mask of one row, hoisted out of the per-element loops: SampleMask::allowed(i, j) for a
// fixed row i (janus/mask.h) becomes
//   window, documents: ks <= j < kv && (j < pre || (lo <= j && j < hi))
//   permutation:       ks <= j < kv && rank[j] <= lo          (lo = rank[r] - OFF[s])
// with kv = 0 for rows that are not real (padding rows, rows past the block's stream segment).
// kv is clamped to Lk, so an allowed key is always a real key of the tensor. For the window
// and documents kinds the row's visible keys are two intervals (SampleMask::intervals: the
// prefix part and the window part, inside the real keys and the row's document), written
// with the lower one first as [ks, pre) U [lo, hi): exact for every descriptor.
struct RowMask {
  int ks, kv, pre, lo, hi;
};
static_assert(sizeof(RowMask) == 20, "BwdCfg::kSmemBytes holds BM RowMasks of 20 bytes");

__device__ __forceinline__ RowMask row_mask(const SampleMask& m, int i, int i_end, int Lk) {
  RowMask r{0, 0, 0, 0, 0};
  const int s = m.stream(i), lr = m.local_row(i);
  if (i >= i_end || lr >= m.rows(s)) return r;
  r.kv = imin(m.kv_len(), Lk);
  if (m.kind == KIND_PERMUTATION) {
    r.ks = m.key_start();
    r.lo = m.rank[lr] - m.p[OFF0 + 4 * s];
    return r;
  }
  int a0, a1, w0, w1;
  m.intervals(s, lr, lr, &a0, &a1, &w0, &w1);
  const bool has_a = a1 > a0, has_w = w1 > w0;
  if (!has_a && !has_w) { r.kv = 0; return r; }
  if (!has_w || (has_a && a0 <= w0)) {   // prefix part first
    r.ks = a0; r.pre = a1;
    if (has_w) { r.lo = w0; r.hi = w1; }
  } else {                               // window part first (or alone)
    r.ks = w0; r.pre = w1;
    if (has_a) { r.lo = a0; r.hi = a1; }
  }
  return r;
}

__device__ __forceinline__ bool row_allows(const RowMask& r, int j, int rank_j, bool perm) {
  if (j < r.ks || j >= r.kv) return false;
  return perm ? rank_j <= r.lo : (j < r.pre || (r.lo <= j && j < r.hi));
}

// Ranks of the keys [j0, j0 + BN) into shared memory (0 past Lk: never read as allowed), for
// the permutation kind's predicate. Plain loads; visible after the caller's next barrier.
template <int BN>
__device__ __forceinline__ void load_key_ranks(int* s_rank, const SampleMask& m, int j0, int Lk,
                                               int tid) {
  if (m.kind != KIND_PERMUTATION) return;
  for (int c = tid; c < BN; c += kThreads) s_rank[c] = j0 + c < Lk ? m.rank[j0 + c] : 0;
}

// Row-layout score tile (forward, dQ pass): bit 4*nt + e of the result says whether fragment
// element s[nt][e] (row r0's row for e < 2, r1's for e >= 2; key j0 + 8nt + 2t + (e & 1)) is
// allowed. The loop is not unrolled: the predicate stays out of the register-heavy code.
template <int NT>
__device__ __forceinline__ uint32_t row_tile_allow_bits(const RowMask& r0, const RowMask& r1,
                                                        const int* s_rank, int j0, int t,
                                                        bool perm) {
  static_assert(NT * 4 <= 32, "one bit per fragment element");
  uint32_t allow = 0u;
#pragma unroll 1
  for (int x = 0; x < NT * 4; ++x) {
    const bool second = (x >> 1) & 1;   // field-wise selects: no dynamically indexed struct
    const int jl = (x >> 2) * 8 + 2 * t + (x & 1);
    const int rank_j = perm ? s_rank[jl] : 0;
    const RowMask r{second ? r1.ks : r0.ks, second ? r1.kv : r0.kv, second ? r1.pre : r0.pre,
                    second ? r1.lo : r0.lo, second ? r1.hi : r0.hi};
    if (row_allows(r, j0 + jl, rank_j, perm)) allow |= 1u << x;
  }
  return allow;
}

__device__ __forceinline__ uint32_t pick_word(const Philox4& w, int k) {
  return k == 0 ? w.w[0] : k == 1 ? w.w[1] : k == 2 ? w.w[2] : w.w[3];   // no local memory
}

// Dropout keep bits of the same row-layout tile (janus/philox.h contract: the draw of row i,
// keys 4*j4 .. 4*j4+3 is dropout_bits(seed, bh, i, j4), word j & 3 for key j). A thread holds
// keys j, j+1 (j = j0 + 8nt + 2t) of rows row0 and row0 + 8, so lanes t and t^1 need the two
// halves of the same draw: each lane of the pair computes every other draw (NT of the 2*NT
// (n-tile, row) pairs) and hands the partner the two words it needs with a shuffle. Each draw
// is computed once and all four of its words are used. Call from all 32 lanes.
template <int NT>
__device__ __forceinline__ uint32_t row_tile_keep_bits(uint64_t seed, int bh, int row0, int j0,
                                                       int t, uint32_t drop_thr) {
  const int odd = t & 1;
  const int j4_base = (j0 >> 2) + (t >> 1);   // j0 is a multiple of 4
  uint32_t keep = 0u;
#pragma unroll 1
  for (int y = 0; y < NT; ++y) {
    const int x = 2 * y + odd;                 // mine; the partner's is 2 * y + (1 - odd)
    const int nt = x >> 1, r = x & 1;          // x = 2 * nt + r: nt = y for both lanes
    const Philox4 w = dropout_bits(seed, bh, row0 + 8 * r, j4_base + 2 * nt);
    // even lanes (keys 4j4, 4j4+1) use words 0, 1; odd lanes (4j4+2, 4j4+3) words 2, 3
    const uint32_t own0 = odd ? w.w[2] : w.w[0], own1 = odd ? w.w[3] : w.w[1];
    const uint32_t give0 = odd ? w.w[0] : w.w[2], give1 = odd ? w.w[1] : w.w[3];
    const uint32_t got0 = __shfl_xor_sync(0xffffffffu, give0, 1);
    const uint32_t got1 = __shfl_xor_sync(0xffffffffu, give1, 1);
    const int rp = 1 - r;                      // the partner's row of n-tile nt
    keep |= (own0 >= drop_thr ? 1u : 0u) << (4 * nt + 2 * r);
    keep |= (own1 >= drop_thr ? 1u : 0u) << (4 * nt + 2 * r + 1);
    keep |= (got0 >= drop_thr ? 1u : 0u) << (4 * nt + 2 * rp);
    keep |= (got1 >= drop_thr ? 1u : 0u) << (4 * nt + 2 * rp + 1);
  }
  return keep;
}

// Dropout keep bits of a transposed (keys x queries) tile of the dK/dV kernel: bit x covers
// query i0 + 8 (x >> 2) + 2t + (x & 1) and key key_a + 8 ((x >> 1) & 1), key_a = jw + g with
// jw the warp's first key (a multiple of 16). The four lanes g & 3 = 0..3 (same t, same g >> 2)
// need words 0..3 of the same draws: each computes a quarter of the draws, then a 4 x 4 word
// transpose over those lanes (three shuffles) gives every lane its word of each draw. Call
// from all 32 lanes.
template <int NX>
__device__ __forceinline__ uint32_t key_tile_keep_bits(uint64_t seed, int bh, int i0, int jw,
                                                       int lane, uint32_t drop_thr) {
  static_assert(NX % 4 == 0 && NX <= 32, "one bit per fragment element");
  const int t = lane & 3, g = lane >> 2, q = g & 3;
  const int j4_base = (jw >> 2) + (g >> 2);
  uint32_t keep = 0u;
#pragma unroll 1
  for (int y = 0; y < NX / 4; ++y) {
    const int x = 4 * y + q;                   // the draw this lane computes
    const int i = i0 + (x >> 2) * 8 + 2 * t + (x & 1);
    const Philox4 w = dropout_bits(seed, bh, i, j4_base + 2 * ((x >> 1) & 1));
    keep |= (pick_word(w, q) >= drop_thr ? 1u : 0u) << x;
#pragma unroll
    for (int k = 1; k < 4; ++k) {
      const int src_q = (q - k) & 3;           // it sends its word (src_q + k) & 3 == q
      const uint32_t u = __shfl_sync(0xffffffffu, pick_word(w, (q + k) & 3),
                                     (lane & ~12) | (src_q << 2));
      keep |= (u >= drop_thr ? 1u : 0u) << (4 * y + src_q);
    }
  }
  return keep;
}

// Keys the rows [i0, i1] of one stream may see: [0, pre) U [lo, hi), tiles < end_tile.
struct KeyRanges {
  int pre, lo, hi, end_tile;
};

template <int BN>
__device__ __forceinline__ KeyRanges key_ranges(const SampleMask& m, int i0, int i1, int Lk) {
  KeyRanges r;
  m.block_ranges(i0, i1, &r.pre, &r.lo, &r.hi);
  const int end = imin(imax(r.pre, r.hi), Lk);
  r.end_tile = (end + BN - 1) / BN;
  return r;
}

// First key tile >= n with an allowed entry for rows [i0, i1], or r.end_tile. Tiles in the
// gap between the prefix and the window are jumped over, dead tiles are never loaded.
template <int BN>
__device__ __forceinline__ int next_key_tile(const SampleMask& m, const KeyRanges& r, int n,
                                             int i0, int i1, int Lk) {
  for (; n < r.end_tile; ++n) {
    const int j0 = n * BN, j1 = imin(j0 + BN, Lk) - 1;
    if (j0 >= r.pre && j1 < r.lo) {   // wholly in the gap: continue at lo's tile
      n = r.lo / BN - 1;
      continue;
    }
    if (m.tile_class(i0, i1, j0, j1) != TILE_SKIP) return n;
  }
  return r.end_tile;
}

// Asynchronously copy rows [0, ROWS) x cols [0, D) of a row-major global matrix (row stride
// ld elements) into smem [ROWS][D + 8]; rows >= valid_rows and cols >= cols are zero-filled
// (no global read for them). g must be 16-byte aligned, ld a multiple of 8.
template <int ROWS, int D, class T>
__device__ __forceinline__ void load_tile_async(T* smem, const T* g, int64_t ld, int valid_rows,
                                                int cols, int tid) {
  constexpr int CH = D / 8;
  constexpr int PITCH = D + 8;
#pragma unroll
  for (int c = tid; c < ROWS * CH; c += kThreads) {
    const int r = c / CH, k = (c % CH) * 8;
    const bool ok = r < valid_rows && k < cols;
    ptx::cp_async_16(smem + r * PITCH + k, ok ? g + r * ld + k : g, ok ? 16 : 0);
  }
}

// acc[NT][4] += A * B^T for one warp: A = 16 rows x KD at sA (pitch PA), B = NT*8 rows x KD
// at sB (pitch PB), both row-major in shared memory, both read with plain ldmatrix (a B^T
// fragment wants B's rows contiguous: b0 = B^T[2t..2t+1][g] = B[g][2t..2t+1]).
template <class T, int NT, int KD, int PA, int PB>
__device__ __forceinline__ void warp_gemm_abt(float (&acc)[NT][4], const T* sA, const T* sB,
                                              int lane) {
  static_assert(NT % 2 == 0 && KD % 16 == 0, "tile shape");
#pragma unroll 1
  for (int kk = 0; kk < KD / 16; ++kk) {
    uint32_t a[4];
    // matrices: rows 0-7 / 8-15 x cols 0-7, then the same x cols 8-15 (a0..a3)
    ptx::ldmatrix_x4(a, sA + (lane & 15) * PA + kk * 16 + (lane >> 4) * 8);
#pragma unroll
    for (int np = 0; np < NT / 2; ++np) {
      uint32_t b[4];
      // matrices: B rows 0-7 x k 0-7, rows 0-7 x k 8-15 (b0, b1 of n-tile 2np), then rows 8-15
      ptx::ldmatrix_x4(b, sB + (np * 16 + (lane >> 4) * 8 + (lane & 7)) * PB + kk * 16 +
                              ((lane >> 3) & 1) * 8);
      const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
      ptx::mma<T>(acc[2 * np], a, b0);
      ptx::mma<T>(acc[2 * np + 1], a, b1);
    }
  }
}

// acc[NT][4] += A * B for one warp: A = 16 x 16*KT given as register fragments a[KT][4],
// B = 16*KT rows x 8*NT cols row-major at sB (pitch PB), read with ldmatrix.trans (a B
// fragment wants B's columns contiguous).
template <class T, int NT, int KT, int PB>
__device__ __forceinline__ void warp_gemm_rb(float (&acc)[NT][4], const uint32_t (&a)[KT][4],
                                             const T* sB, int lane) {
  static_assert(NT % 2 == 0, "tile shape");
#pragma unroll
  for (int kk = 0; kk < KT; ++kk) {
#pragma unroll
    for (int np = 0; np < NT / 2; ++np) {
      uint32_t b[4];
      // matrices: k 0-7 / 8-15 x n 0-7 (b0, b1 of n-tile 2np), then the same x n 8-15
      ptx::ldmatrix_x4_trans(b, sB + (kk * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * PB +
                                    np * 16 + (lane >> 4) * 8);
      const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
      ptx::mma<T>(acc[2 * np], a[kk], b0);
      ptx::mma<T>(acc[2 * np + 1], a[kk], b1);
    }
  }
}

// acc[NT][4] += A * B for one warp with A = 16 x KD at sA (pitch PA) in shared memory.
template <class T, int NT, int KD, int PA, int PB>
__device__ __forceinline__ void warp_gemm_ab(float (&acc)[NT][4], const T* sA, const T* sB,
                                             int lane) {
#pragma unroll 1
  for (int kk = 0; kk < KD / 16; ++kk) {
    uint32_t a[1][4];
    ptx::ldmatrix_x4(a[0], sA + (lane & 15) * PA + kk * 16 + (lane >> 4) * 8);
    warp_gemm_rb<T, NT, 1, PB>(acc, a, sB + kk * 16 * PB, lane);
  }
}

// Accumulator tile (16 x 8NT, fp32) -> A fragments (16 x 16 per k-step) in T: the C layout of
// n-tiles 2k and 2k+1 is exactly the A layout of k-step k.
template <class T, int NT>
__device__ __forceinline__ void acc_to_a(uint32_t (&a)[NT / 2][4], const float (&s)[NT][4]) {
#pragma unroll
  for (int k = 0; k < NT / 2; ++k) {
    a[k][0] = ptx::pack2<T>(s[2 * k][0], s[2 * k][1]);
    a[k][1] = ptx::pack2<T>(s[2 * k][2], s[2 * k][3]);
    a[k][2] = ptx::pack2<T>(s[2 * k + 1][0], s[2 * k + 1][1]);
    a[k][3] = ptx::pack2<T>(s[2 * k + 1][2], s[2 * k + 1][3]);
  }
}

template <int NT>
__device__ __forceinline__ void zero(float (&acc)[NT][4]) {
#pragma unroll
  for (int n = 0; n < NT; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[n][e] = 0.f;
}

__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}

__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

}  // namespace attn
}  // namespace janus
