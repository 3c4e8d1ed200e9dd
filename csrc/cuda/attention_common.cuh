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

// Tile geometry. Forward: a block holds Q (BM rows), K and V (BN keys) tiles.
template <int D>
struct FwdCfg {
  static constexpr int BM = 64;            // rows per block (16 per warp)
  static constexpr int BN = 64;            // keys per tile
  static constexpr int PITCH = D + 8;      // shared-memory row pitch (elements)
  static constexpr int kSmemBytes = (BM + 2 * BN) * PITCH * 2;   // Q, K, V (16-bit)
};

// Backward: a block owns BN keys (16 per warp) and walks query tiles of BM rows; it holds K, V,
// Q, dO tiles, the dS tile [BM][BN] and the tile's lse and delta. BM = 32 for D = 128 keeps
// the dK and dV accumulators (2 x 16 x D per warp) in registers without spills.
template <int D>
struct BwdCfg {
  static constexpr int BN = 64;
  static constexpr int BM = D <= 64 ? 64 : 32;
  static constexpr int PITCH = D + 8;
  static constexpr int PITCH_S = BN + 8;
  static constexpr int kSmemBytes = (2 * BN + 2 * BM) * PITCH * 2 + BM * PITCH_S * 2 + 2 * BM * 4;
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
