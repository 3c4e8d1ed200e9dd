// The mask algebra: per-element predicate, per-row key ranges and tile classes of a
// MaskDescriptor (janus_kernels/masks.py is the Python spelling, triton/mask.py the Triton
// one; all three must agree). Torch-free and __host__ __device__ so the CPU backend, the
// CUDA kernels and the CPU emulation of the CUDA kernels all include this one file.
//
// Per sample b the descriptor is a row of NUM_FIELDS int32 (see Field below). Rows
// [0, q_split) are stream 0, rows [q_split, Lq) stream 1 with local row r = i - q_split.
//   valid_row = r < ROWS[s];  valid_key = j < KV_LEN
//   hi = max(r + OFF[s], HMIN[s]);  lo = hi - WIDTH[s]
//   allowed = valid_row && valid_key && (j < PREFIX || lo <= j < hi)
// Permutation kind: allowed = valid_row && valid_key && rank[j] + OFF[s] <= rank[r].
#pragma once
#include <stdint.h>

#if defined(__CUDACC__) || defined(JANUS_CUDA_EMU)
#define JANUS_HD __host__ __device__ __forceinline__
#else
#define JANUS_HD inline
#endif

namespace janus {

enum Field : int {
  KV_LEN = 0, PREFIX = 1,
  ROWS0 = 2, OFF0 = 3, HMIN0 = 4, WIDTH0 = 5,
  ROWS1 = 6, OFF1 = 7, HMIN1 = 8, WIDTH1 = 9,
  NUM_FIELDS = 10
};
enum Kind : int { KIND_WINDOW = 0, KIND_PERMUTATION = 1 };
enum TileClass : int { TILE_SKIP = 0, TILE_PARTIAL = 1, TILE_FULL = 2 };

JANUS_HD int imax(int a, int b) { return a > b ? a : b; }
JANUS_HD int imin(int a, int b) { return a < b ? a : b; }

// One sample's view of the descriptor.
struct SampleMask {
  const int32_t* p;      // NUM_FIELDS ints of this sample
  const int32_t* rank;   // this sample's rank row (permutation kind), else nullptr
  int q_split;
  int kind;

  JANUS_HD int kv_len() const { return p[KV_LEN]; }
  JANUS_HD int prefix() const { return kind == KIND_WINDOW ? imin(p[PREFIX], p[KV_LEN]) : 0; }
  JANUS_HD int stream(int i) const { return i >= q_split ? 1 : 0; }
  JANUS_HD int local_row(int i) const { return i >= q_split ? i - q_split : i; }
  JANUS_HD int rows(int s) const { return p[ROWS0 + 4 * s]; }
  JANUS_HD bool row_valid(int i) const { return local_row(i) < rows(stream(i)); }
  // Window of local row r in stream s: [lo, hi) (before clamping to [0, KV_LEN)).
  JANUS_HD int win_hi(int s, int r) const { return imax(r + p[OFF0 + 4 * s], p[HMIN0 + 4 * s]); }
  JANUS_HD int win_lo(int s, int r) const { return win_hi(s, r) - p[WIDTH0 + 4 * s]; }

  JANUS_HD bool allowed(int i, int j) const {
    const int s = stream(i), r = local_row(i);
    if (r >= rows(s) || j >= p[KV_LEN] || j < 0) return false;
    if (kind == KIND_PERMUTATION) return rank[j] + p[OFF0 + 4 * s] <= rank[r];
    if (j < p[PREFIX]) return true;
    const int hi = win_hi(s, r);
    return hi - p[WIDTH0 + 4 * s] <= j && j < hi;
  }

  // Keys row i may see, as the union of [0, pre) and [lo, hi), clamped to [0, KV_LEN).
  // For the permutation kind the range is a superset: [0, KV_LEN) (use allowed()).
  JANUS_HD void row_ranges(int i, int* pre, int* lo, int* hi) const {
    const int s = stream(i), r = local_row(i), kv = p[KV_LEN];
    if (r >= rows(s)) { *pre = 0; *lo = 0; *hi = 0; return; }
    if (kind == KIND_PERMUTATION) { *pre = kv; *lo = 0; *hi = 0; return; }
    *pre = imin(p[PREFIX], kv);
    const int w = p[WIDTH0 + 4 * s];
    if (w <= 0) { *lo = 0; *hi = 0; return; }
    const int h = win_hi(s, r);
    *hi = imin(h, kv);
    *lo = imax(h - w, 0);
    if (*lo >= *hi) { *lo = 0; *hi = 0; }
  }

  // Keys needed by the rows [i0, i1] (inclusive) of ONE stream: [0, pre) U [lo, hi).
  // Exact union, because lo and hi are nondecreasing in the row.
  JANUS_HD void block_ranges(int i0, int i1, int* pre, int* lo, int* hi) const {
    const int s = stream(i0), r0 = local_row(i0);
    const int r1 = imin(local_row(i1), rows(s) - 1);
    if (r1 < r0) { *pre = 0; *lo = 0; *hi = 0; return; }
    const int kv = p[KV_LEN];
    if (kind == KIND_PERMUTATION) { *pre = kv; *lo = 0; *hi = 0; return; }
    *pre = imin(p[PREFIX], kv);
    const int w = p[WIDTH0 + 4 * s];
    if (w <= 0) { *lo = 0; *hi = 0; return; }
    *lo = imax(win_hi(s, r0) - w, 0);
    *hi = imin(win_hi(s, r1), kv);
    if (*lo >= *hi) { *lo = 0; *hi = 0; }
  }

  // Class of rows [i0, i1] x keys [j0, j1] (inclusive, all in bounds of the padded sizes).
  // Exact for the window kind; the permutation kind answers SKIP/PARTIAL from lengths only
  // (the rank extrema are the caller's business).
  JANUS_HD int tile_class(int i0, int i1, int j0, int j1) const {
    int c0 = -1, c1 = -1;  // -1 = stream not present in the tile
    if (i0 < q_split) c0 = segment_class(0, i0, imin(i1, q_split - 1), j0, j1);
    if (i1 >= q_split) c1 = segment_class(1, imax(i0, q_split) - q_split, i1 - q_split, j0, j1);
    const bool skip = (c0 == -1 || c0 == TILE_SKIP) && (c1 == -1 || c1 == TILE_SKIP);
    const bool full = (c0 == -1 || c0 == TILE_FULL) && (c1 == -1 || c1 == TILE_FULL);
    return skip ? TILE_SKIP : (full ? TILE_FULL : TILE_PARTIAL);
  }

  // Local rows [r0, r1] of stream s.
  JANUS_HD int segment_class(int s, int r0, int r1, int j0, int j1) const {
    const int kv = p[KV_LEN], nrows = rows(s);
    const int r1v = imin(r1, nrows - 1);
    if (r1v < r0 || j0 >= kv) return TILE_SKIP;
    if (kind == KIND_PERMUTATION) return TILE_PARTIAL;
    const int pre = p[PREFIX], w = p[WIDTH0 + 4 * s];
    const int jl = imin(j1, kv - 1);
    const bool win_hit = w > 0 && win_hi(s, r1v) > j0 && win_hi(s, r0) <= jl + w;
    if (j0 >= pre && !win_hit) return TILE_SKIP;
    const bool all_rows = r1 < nrows;
    const bool covered = j1 < kv && (j1 < pre ||
        (w > 0 && win_hi(s, r1) - w <= imax(j0, pre) && j1 < win_hi(s, r0)));
    return (all_rows && covered) ? TILE_FULL : TILE_PARTIAL;
  }
};

JANUS_HD SampleMask sample_mask(const int32_t* params, const int32_t* rank, int64_t rank_stride,
                                int b, int q_split, int kind) {
  SampleMask m;
  m.p = params + (int64_t)b * NUM_FIELDS;
  m.rank = rank ? rank + (int64_t)b * rank_stride : nullptr;
  m.q_split = q_split;
  m.kind = kind;
  return m;
}

}  // namespace janus
