// The mask algebra: per-element predicate, per-row key ranges and tile classes of a
// MaskDescriptor (janus_kernels/masks.py is the Python spelling, triton/mask.py the Triton
// one; all three must agree). Torch-free and __host__ __device__ so the CPU backend, the
// CUDA kernels and the CPU emulation of the CUDA kernels all include this one file.
//
// Per sample b the descriptor is a row of NUM_FIELDS int32 (see Field below). Rows
// [0, q_split) are stream 0, rows [q_split, Lq) stream 1 with local row r = i - q_split.
//   valid_row = r < ROWS[s];  valid_key = KEY_START <= j < KV_LEN
//   hi = max(r + OFF[s], HMIN[s]);  lo = hi - WIDTH[s]
//   allowed = valid_row && valid_key && (j < PREFIX || lo <= j < hi)
// Permutation kind: allowed = valid_row && valid_key && rank[j] + OFF[s] <= rank[r].
// Documents kind (packed sequences): the window predicate && q_doc[i] == k_doc[j], with the
// side table (B, Lq + Lk) = [q_doc (Lq) | k_doc (Lk)], each run nondecreasing, so the keys
// of one document are a contiguous run (found by binary search).
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
  ROWS1 = 6, OFF1 = 7, HMIN1 = 8, WIDTH1 = 9, KEY_START = 10,
  NUM_FIELDS = 11
};
enum Kind : int { KIND_WINDOW = 0, KIND_PERMUTATION = 1, KIND_DOCUMENTS = 2 };

JANUS_HD bool kind_valid(int kind) { return kind >= KIND_WINDOW && kind <= KIND_DOCUMENTS; }
// Columns of the int32 side table ("rank") a kind reads: 0 = none.
JANUS_HD int64_t side_table_width(int kind, int64_t Lq, int64_t Lk) {
  return kind == KIND_PERMUTATION ? Lk : (kind == KIND_DOCUMENTS ? Lq + Lk : 0);
}
enum TileClass : int { TILE_SKIP = 0, TILE_PARTIAL = 1, TILE_FULL = 2 };

JANUS_HD int imax(int a, int b) { return a > b ? a : b; }
JANUS_HD int imin(int a, int b) { return a < b ? a : b; }

// One sample's view of the descriptor.
struct SampleMask {
  const int32_t* p;      // NUM_FIELDS ints of this sample
  const int32_t* rank;   // permutation: this sample's ranks; documents: its row documents
  const int32_t* kdoc;   // documents: this sample's key documents (rank + Lq), else nullptr
  int q_split;
  int kind;
  int Lq, Lk;            // padded sizes: every side-table index is clamped to them

  JANUS_HD int kv_len() const { return p[KV_LEN]; }
  JANUS_HD int key_start() const { return p[KEY_START]; }
  JANUS_HD int prefix() const { return kind != KIND_PERMUTATION ? imin(p[PREFIX], p[KV_LEN]) : 0; }
  JANUS_HD int stream(int i) const { return i >= q_split ? 1 : 0; }
  JANUS_HD int local_row(int i) const { return i >= q_split ? i - q_split : i; }
  JANUS_HD int rows(int s) const { return p[ROWS0 + 4 * s]; }
  JANUS_HD bool row_valid(int i) const { return local_row(i) < rows(stream(i)); }
  // Window of local row r in stream s: [lo, hi) (before clamping to [0, KV_LEN)).
  JANUS_HD int win_hi(int s, int r) const { return imax(r + p[OFF0 + 4 * s], p[HMIN0 + 4 * s]); }
  JANUS_HD int win_lo(int s, int r) const { return win_hi(s, r) - p[WIDTH0 + 4 * s]; }
  JANUS_HD int row_doc(int i) const { return rank[imax(imin(i, Lq - 1), 0)]; }
  // Real keys [a, e): [KEY_START, KV_LEN) clamped to the tensor.
  JANUS_HD int keys_begin() const { return imax(p[KEY_START], 0); }
  JANUS_HD int keys_end() const { return imax(imin(p[KV_LEN], Lk), keys_begin()); }
  // First real key whose document is >= d (strict: > d), by binary search (k_doc is
  // nondecreasing; a table that is not still gives an index inside [a, e)).
  JANUS_HD int doc_bound(int d, bool strict) const {
    int a = keys_begin(), e = keys_end();
    while (a < e) {
      const int m = a + (e - a) / 2;
      if (kdoc[m] < d || (strict && kdoc[m] == d)) a = m + 1; else e = m;
    }
    return a;
  }
  // Whether row_ranges() gives exactly the visible keys (the kernels then mask from the
  // ranges; else per element with allowed()). Inexact only for the permutation kind and for
  // a prefix part [max(KEY_START, doc start), PREFIX) that starts above key 0.
  JANUS_HD bool ranges_exact() const {
    if (kind == KIND_PERMUTATION) return false;
    return !(p[PREFIX] > p[KEY_START] && (p[KEY_START] > 0 || kind == KIND_DOCUMENTS));
  }

  JANUS_HD bool allowed(int i, int j) const {
    const int s = stream(i), r = local_row(i);
    if (r >= rows(s) || j >= p[KV_LEN] || j < p[KEY_START] || j < 0) return false;
    if (kind == KIND_PERMUTATION) return rank[j] + p[OFF0 + 4 * s] <= rank[r];
    if (kind == KIND_DOCUMENTS && (j >= Lk || row_doc(i) != kdoc[j])) return false;
    if (j < p[PREFIX]) return true;
    const int hi = win_hi(s, r);
    return hi - p[WIDTH0 + 4 * s] <= j && j < hi;
  }

  // The keys local rows [r0, r1v] (valid rows of stream s, r0 <= r1v) see, as two exact
  // intervals: the prefix part [*a0, *a1) and the window part [*w0, *w1) (either may be
  // empty: end <= start), each inside the real keys and, for documents, inside the key runs
  // of the rows' documents. For one row this is exactly its visible set; for a block the
  // union over its rows (a superset for documents spanning several documents).
  JANUS_HD void intervals(int s, int r0, int r1v, int* a0, int* a1, int* w0, int* w1) const {
    int ka = keys_begin(), ke = imin(p[KV_LEN], Lk);
    if (kind == KIND_DOCUMENTS) {
      const int base = s ? q_split : 0;
      const int da = doc_bound(row_doc(base + r0), false);
      const int de = doc_bound(row_doc(base + r1v), true);
      ka = da;
      ke = de;
    }
    *a0 = ka;
    *a1 = imin(p[PREFIX], ke);
    const int w = p[WIDTH0 + 4 * s];
    *w0 = imax(win_hi(s, r0) - w, ka);
    *w1 = w > 0 ? imin(win_hi(s, r1v), ke) : 0;
  }

  // Keys row i may see, as the union of [0, pre) and [lo, hi), clamped to [0, KV_LEN): exact
  // when ranges_exact(), else a superset (use allowed()); for the permutation kind
  // [0, KV_LEN).
  JANUS_HD void row_ranges(int i, int* pre, int* lo, int* hi) const {
    const int s = stream(i), r = local_row(i);
    if (r >= rows(s)) { *pre = 0; *lo = 0; *hi = 0; return; }
    if (kind == KIND_PERMUTATION) { *pre = imin(p[KV_LEN], Lk); *lo = 0; *hi = 0; return; }
    int a0, a1, w0, w1;
    intervals(s, r, r, &a0, &a1, &w0, &w1);
    encode(a0, a1, w0, w1, pre, lo, hi);
  }

  // Keys needed by the rows [i0, i1] (inclusive) of ONE stream: [0, pre) U [lo, hi).
  // Exact union for the window kind (lo and hi are nondecreasing in the row), a superset
  // for the other kinds.
  JANUS_HD void block_ranges(int i0, int i1, int* pre, int* lo, int* hi) const {
    const int s = stream(i0), r0 = local_row(i0);
    const int r1 = imin(local_row(i1), rows(s) - 1);
    if (r1 < r0) { *pre = 0; *lo = 0; *hi = 0; return; }
    if (kind == KIND_PERMUTATION) { *pre = imin(p[KV_LEN], Lk); *lo = 0; *hi = 0; return; }
    int a0, a1, w0, w1;
    intervals(s, r0, r1, &a0, &a1, &w0, &w1);
    encode(a0, a1, w0, w1, pre, lo, hi);
  }

  // [a0, a1) U [w0, w1) as [0, pre) U [lo, hi): exact unless both parts are nonempty,
  // disjoint and a0 > 0 (then [0, a0) is added: see ranges_exact()).
  JANUS_HD static void encode(int a0, int a1, int w0, int w1, int* pre, int* lo, int* hi) {
    const bool has_a = a1 > a0, has_w = w1 > w0;
    *pre = 0; *lo = 0; *hi = 0;
    if (!has_a && !has_w) return;
    if (!has_a) { *lo = w0; *hi = w1; return; }
    if (!has_w) { if (a0 == 0) *pre = a1; else { *lo = a0; *hi = a1; } return; }
    if (w0 <= a1 && a0 <= w1) { *lo = imin(a0, w0); *hi = imax(a1, w1); }   // one run
    else { *pre = a1; *lo = w0; *hi = w1; }   // disjoint: exact iff a0 == 0
  }

  // Class of rows [i0, i1] x keys [j0, j1] (inclusive, all in bounds of the padded sizes).
  // Exact for the window kind; the permutation kind answers SKIP/PARTIAL from lengths only
  // (the rank extrema are the caller's business); documents: exact-or-conservative.
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
    const int kv = p[KV_LEN], nrows = rows(s), ks = p[KEY_START];
    const int r1v = imin(r1, nrows - 1);
    const int jl = imin(j1, kv - 1), j0k = imax(j0, ks);   // the tile's real keys
    if (r1v < r0 || j0k > jl) return TILE_SKIP;
    if (kind == KIND_PERMUTATION) return TILE_PARTIAL;
    const int pre = p[PREFIX], w = p[WIDTH0 + 4 * s];
    const bool win_hit = w > 0 && win_hi(s, r1v) > j0k && win_hi(s, r0) <= jl + w;
    if (j0k >= pre && !win_hit) return TILE_SKIP;
    const bool all_rows = r1 < nrows;
    bool covered = j0 >= ks && j1 < kv && (j1 < pre ||
        (w > 0 && win_hi(s, r1) - w <= imax(j0, pre) && j1 < win_hi(s, r0)));
    if (kind == KIND_DOCUMENTS) {   // corner documents: rows [r0, r1v], real keys [j0k, jl]
      const int base = s ? q_split : 0;
      const int jc = imin(jl, Lk - 1);
      if (j0k >= Lk) return TILE_SKIP;
      const int qa = row_doc(base + r0), qb = row_doc(base + r1v);
      const int ka = kdoc[j0k], kb = kdoc[jc];
      if (qb < ka || kb < qa) return TILE_SKIP;
      covered = covered && qa == qb && ka == kb && qa == ka;
    }
    return (all_rows && covered) ? TILE_FULL : TILE_PARTIAL;
  }
};

// Lq, Lk: the padded sizes of the call (the documents side table is (B, Lq + Lk)).
JANUS_HD SampleMask sample_mask(const int32_t* params, const int32_t* rank, int64_t rank_stride,
                                int b, int q_split, int kind, int Lq, int Lk) {
  SampleMask m;
  m.p = params + (int64_t)b * NUM_FIELDS;
  m.rank = rank ? rank + (int64_t)b * rank_stride : nullptr;
  m.kdoc = (rank && kind == KIND_DOCUMENTS) ? m.rank + Lq : nullptr;
  m.q_split = q_split;
  m.kind = kind;
  m.Lq = Lq;
  m.Lk = Lk;
  return m;
}

}  // namespace janus
