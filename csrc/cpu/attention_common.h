// Pieces shared by the CPU attention forward (attention_fwd.cpp), backward (attention_bwd.cpp)
// and glue (attention_glue.cpp): tile sizes, per-thread scratch, descriptor / dropout views,
// work items and their scheduling, and the small data-movement helpers (VNNI packing, dtype
// widening). Like every file in csrc/cpu it is compiled once per ISA level (setup.py), so the
// at::vec code below is AVX2 in one module and AVX-512 in the other.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/native/CPUBlas.h>
#include <ATen/native/cpu/utils.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <atomic>
#include <cstdlib>
#include <cmath>
#include <limits>
#include <vector>

#include <immintrin.h>

#include "janus/mask.h"
#include "janus/philox.h"
#include "output_pool.h"
#include "row_io.h"
#include "transpose.h"


namespace janus_cpu {

using at::BFloat16;
using at::Half;
using at::BFloat16;
using Vec = at::vec::Vectorized<float>;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

#ifndef JANUS_FWD_BLOCK_M
#define JANUS_FWD_BLOCK_M 128
#endif
#ifndef JANUS_FWD_CHUNK
#define JANUS_FWD_CHUNK 512
#endif
constexpr int kBlockM = JANUS_FWD_BLOCK_M;   // rows per work item (forward)
constexpr int kChunkFwd = JANUS_FWD_CHUNK;   // keys per forward chunk
constexpr size_t kPoolMinBytes = size_t(2) << 20;   // outputs this large use the pool
#ifndef JANUS_BWD_BLOCK_M
#define JANUS_BWD_BLOCK_M 64
#endif
#ifndef JANUS_BWD_CHUNK
#define JANUS_BWD_CHUNK 128
#endif
constexpr int kBlockMBwd = JANUS_BWD_BLOCK_M;   // rows per block (backward)
constexpr int kChunkBwd = JANUS_BWD_CHUNK;      // keys per backward chunk
constexpr int kMaxHeadDim = 256;   // the op's limit (attention.py MAX_HEAD_DIM)

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Per-thread scratch kept across calls: grow-only, 64-byte aligned, NOT initialised (callers
// write before they read). Per-call std::vectors cost a malloc, a zero fill and first-touch
// page faults on every call, which at small shapes (IWSLT batches) rivalled the GEMMs.
// OpenMP's worker threads persist, so each keeps its buffers (sized by the largest call so
// far: a few hundred KB to a few MB per thread) for its lifetime.
enum ScratchSlot : int {
  kS, kAcc, kRowMax, kRowSum, kP, kKt, kV,              // forward
  kQt, kDot, kDqt, kDq, kPt, kDpt, kQv, kGv, kPb, kDs, kDsv, kDkAcc, kDvAcc,   // backward
  kVt, kDtanh,          // backward, small tiles
  kQf, kKf, kVf, kGf,   // fp32 copies of bf16/fp16 tiles (the widening path)
  kNumSlots
};

template <typename T>
T* scratch(ScratchSlot slot, int64_t n) {
  struct Buf {
    void* p = nullptr;
    size_t bytes = 0;
    ~Buf() { std::free(p); }
  };
  thread_local Buf bufs[kNumSlots];
  Buf& b = bufs[slot];
  const size_t need = (size_t)round_up(std::max<int64_t>(n, 1) * (int64_t)sizeof(T), 64);
  if (b.bytes < need) {
    std::free(b.p);
    b.p = std::aligned_alloc(64, need);
    TORCH_CHECK(b.p != nullptr, "attention: out of memory for ", need, " bytes of scratch");
    b.bytes = need;
  }
  return static_cast<T*>(b.p);
}

// ------------------------------------------------------------------------ arguments
struct MaskArgs {
  const int32_t* params;
  const int32_t* rank;
  int64_t rank_stride;
  int q_split;
  int kind;
  int Lq, Lk;
  janus::SampleMask sample(int b) const {
    return janus::sample_mask(params, rank, rank_stride, b, q_split, kind, Lq, Lk);
  }
};

// Score modifiers (op_schemas.h): s = scale q.k; softcap > 0: s = softcap tanh(s / softcap);
// then s += rel_bias[h * rel_len + (j - i + Lq - 1)] (rel_len = Lq + Lk - 1). The backward
// adds the score gradient of each (h, i, j) into d_rel_bias at the same index.
struct ScoreMods {
  float softcap = 0.f;             // 0: off
  const float* rel_bias = nullptr; // (H, rel_len) float32 contiguous, or nullptr
  float* d_rel_bias = nullptr;     // backward only: (H, rel_len) float32, zero-initialized
  int64_t rel_len = 0;
  bool on() const { return softcap > 0.f || rel_bias != nullptr; }
};

// tanh for the softcap, cheaper than at::vec's (Sleef's u10 tanh, which the forward's
// modifier pass spent most of its time in) at a few ulp: |x| < 0.4, the odd Taylor series to
// x^15 (truncation < 3e-10 relative); otherwise 1 - 2 / (exp(2|x|) + 1), whose cancellation
// costs at most a factor 1.7 on exp's 1 ulp; the sign copied back. exp overflowing to inf
// gives exactly 1.
inline Vec softcap_tanh(const Vec& x) {
  const Vec a = x.abs(), z = x * x;
  Vec p(-929569.f / 638512875.f);   // Taylor coefficients of tanh, x^15 down to x^3
  p = at::vec::fmadd(p, z, Vec(21844.f / 6081075.f));
  p = at::vec::fmadd(p, z, Vec(-1382.f / 155925.f));
  p = at::vec::fmadd(p, z, Vec(62.f / 2835.f));
  p = at::vec::fmadd(p, z, Vec(-17.f / 315.f));
  p = at::vec::fmadd(p, z, Vec(2.f / 15.f));
  p = at::vec::fmadd(p, z, Vec(-1.f / 3.f));
  const Vec small = at::vec::fmadd(p * z, x, x);
  const Vec one(1.f);
  const Vec big = one - Vec(2.f) / ((a + a).exp() + one);
  const Vec big_signed = Vec::blendv(big, Vec(0.f) - big, x < Vec(0.f));
  return Vec::blendv(small, big_signed, a >= Vec(0.4f));
}

// Applies the score modifiers to n scores of one tile row, in place: x = scale x, then
// x = softcap tanh(x / softcap) (kCap), then x += bias[0, n) (when bias is set: the rel_bias
// entries of the row's keys, a contiguous run). g (when set) receives 1 - tanh^2, the
// softcap's derivative the backward multiplies dS by. The kernels call it only when
// ScoreMods::on(), so the no-modifier path keeps its loops as they were.
template <bool kCap>
inline void modify_scores_row(float* x, int64_t n, float scale, float softcap, const float* bias,
                              float* g) {
  const Vec vscale(kCap ? scale / softcap : scale), vcap(softcap), one(1.f);
  auto step = [&](int64_t t, int64_t cnt) {
    Vec s = Vec::loadu(x + t, cnt) * vscale;
    if constexpr (kCap) {
      const Vec th = softcap_tanh(s);
      if (g) (one - th * th).store(g + t, cnt);
      s = vcap * th;
    }
    if (bias) s = s + Vec::loadu(bias + t, cnt);
    s.store(x + t, cnt);
  };
  int64_t t = 0;
  for (; t + Vec::size() <= n; t += Vec::size()) step(t, Vec::size());
  if (t < n) step(t, n - t);   // partial loads: never reads bias past the row's keys
}

inline void modify_scores_row(float* x, int64_t n, float scale, float softcap, const float* bias,
                              float* g = nullptr) {
  if (softcap > 0.f) modify_scores_row<true>(x, n, scale, softcap, bias, g);
  else modify_scores_row<false>(x, n, scale, softcap, bias, g);
}

struct Dropout {
  float p = 0.f;
  uint32_t threshold = 0;
  uint64_t seed = 0;
  float inv_keep = 1.f;
  bool on() const { return p > 0.f; }
};

inline Dropout make_dropout(double p, const c10::optional<at::Tensor>& seed) {
  Dropout d;
  if (p <= 0.0) return d;
  TORCH_CHECK(seed.has_value() && seed->numel() == 1 && seed->dtype() == at::kLong,
              "rng_seed: dropout_p > 0 needs an int64 tensor with one element");
  d.p = (float)p;
  d.threshold = janus::drop_threshold(d.p);
  d.seed = (uint64_t)seed->cpu().item<int64_t>();
  d.inv_keep = 1.f / (1.f - d.p);
  return d;
}

// Keys needed by rows [i0, i1] as [0, pre) U [lo, hi): block_ranges for rows of one stream; a
// block spanning both streams (see make_row_blocks) gets a superset of the union of the two
// streams' sets (the kernels mask each row from its own exact ranges, so a superset only
// costs the keys it adds).
inline void span_ranges(const janus::SampleMask& m, int q_split, int i0, int i1, int* pre,
                        int* lo, int* hi) {
  if (i0 >= q_split || i1 < q_split) { m.block_ranges(i0, i1, pre, lo, hi); return; }
  int p0, l0, h0, p1, l1, h1;
  m.block_ranges(i0, q_split - 1, &p0, &l0, &h0);
  m.block_ranges(q_split, i1, &p1, &l1, &h1);
  *pre = std::max(p0, p1);
  const bool w0 = h0 > l0, w1 = h1 > l1;
  *lo = w0 ? (w1 ? std::min(l0, l1) : l0) : (w1 ? l1 : 0);
  *hi = w0 ? (w1 ? std::max(h0, h1) : h0) : (w1 ? h1 : 0);
}

// Whether a block's two key ranges [0, pre) and [lo, hi) (a gap between them) may be
// computed as ONE chunk [0, hi) at no extra cost in vector lanes per row (the gap keys are
// masked like any key a row does not see) and within `chunk` keys. At IWSLT sizes (the JANUS
// NAR mask's prefix [0, 15) and windows in [16, 43)) that is one 3-vector chunk instead of a
// 1-vector and a 2-vector one, which lets the forward's register softmax tile take the block.
inline bool merge_key_gap(int pre, int lo, int hi, int chunk) {
  constexpr int kW = Vec::size();
  return pre > 0 && lo > pre && hi > lo && hi <= chunk &&
         round_up(hi, kW) <= round_up(pre, kW) + round_up(hi - lo, kW);
}

struct RowBlock { int i0, i1; int64_t cost; };

// Tile work of rows [i0, i1] (a block of one stream, or content rows i0.. plus the query
// rows up to i1), in score entries over the keys the block computes: each key range as a
// row-major S tile rounded up to whole vectors, averaged with the unrounded products.
inline int64_t block_work(const janus::SampleMask& m, int q_split, int rows0, int i0, int i1) {
  int pre, lo, hi;
  span_ranges(m, q_split, i0, i1, &pre, &lo, &hi);
  auto keys = [](int w) { return w + round_up(w, Vec::size()); };
  const int64_t k = (hi <= lo) ? keys(pre) : (lo <= pre) ? keys(std::max(pre, hi))
                                                         : keys(pre) + keys(hi - lo);
  const int rows = i1 < q_split ? i1 - i0 + 1 : std::max(rows0 - i0, 0) + (i1 - q_split + 1);
  return k * rows;
}

// Where to cut a merged block (content rows 0.. rows0 - 1, query rows q_split.. last): the
// first row of its second block, 0 for no cut. The content rows that see fewer keys go in
// a block of their own when that saves more work than a block costs (kBlockWork: set-up,
// GEMM calls, row tails; in score entries). In the JANUS NAR/AUX mask the unmasked and mask
// rows see U + M keys and the G and query rows U + 2M: at IWSLT sizes cutting there skips
// ~17% of the merged block's entries, which measured 2-3% off the forward and the backward
// (1.5% for the causal AR mask). Candidates go in steps of 4 rows (cheap enough to try per
// sample on every call).
inline int merged_split(const janus::SampleMask& m, int q_split, int rows0, int last) {
  constexpr int64_t kBlockWork = 256;
  int best_s = 0;
  int64_t best = block_work(m, q_split, rows0, 0, last);
  for (int s = 4;; s += 4) {
    s = std::min(s, rows0);
    const int64_t w = block_work(m, q_split, rows0, 0, s - 1) +
                      block_work(m, q_split, rows0, s == rows0 ? q_split : s, last) + kBlockWork;
    if (w < best) { best = w; best_s = s; }
    if (s == rows0) return best_s;
  }
}

// Row blocks of sample b: (first row, last row) runs of at most `block` valid rows of one
// stream, in row order. merge_streams: when the sample's rows from row 0 to its last query
// row fit in one block, that whole span is ONE block, padding rows between the streams
// included (they see no key: zero output, zero gradient). At IWSLT-sized batches (~35
// content and ~12 query rows) this halves the per-block work (GEMM calls, transposes,
// statistics) and turns two GEMMs with row tails (36 and 12 of 16) into one of ~48-64 rows.
// The fp32 tiles skip the gap rows (RowRuns: the GEMMs read rows through pointers); only
// native bf16 brgemm computes them, as rows that see no key. The merged span may be cut once
// in its content rows (merged_split: leading rows that see fewer keys). The caller turns
// merging off when it needs the blocks for parallelism.
inline std::vector<RowBlock> make_row_blocks(const MaskArgs& ma, int b, int Lq, int block,
                                             bool merge_streams) {
  std::vector<RowBlock> items;
  const auto m = ma.sample(b);
  auto add = [&](int i0, int i1) {
    int pre, lo, hi;
    span_ranges(m, ma.q_split, i0, i1, &pre, &lo, &hi);
    const int64_t keys = (lo < pre) ? std::max(pre, hi) : pre + (hi - lo);
    if (keys <= 0) return;  // rows that see nothing: output stays 0, lse -inf
    items.push_back({i0, i1, keys * (i1 - i0 + 1)});
  };
  const int rows0 = std::max(0, std::min(m.rows(0), ma.q_split));
  const int rows1 = std::max(0, std::min(m.rows(1), Lq - ma.q_split));
  if (merge_streams && rows0 > 0 && rows1 > 0 && ma.q_split + rows1 <= block) {
    const int last = ma.q_split + rows1 - 1;
    const int s = merged_split(m, ma.q_split, rows0, last);
    if (s > 0) add(0, s - 1);
    add(s == rows0 ? ma.q_split : s, last);   // at rows0: the query rows alone
    return items;
  }
  // rows [a, e) in blocks of `block` rows (whole blocks first: the backward's GEMMs have
  // the rows as their N dimension, which brgemm runs much slower with a tail)
  auto cut = [&](int a, int e) {
    for (int i0 = a; i0 < e; i0 += block) add(i0, std::min(i0 + block, e) - 1);
  };
  cut(0, rows0);
  cut(ma.q_split, ma.q_split + rows1);
  return items;
}

// The rows of one block: one run of one stream, or the content run and the query run of a
// merged block (row 0 .. the last content row, q_split .. the block's last row).
struct RowRuns {
  int start[2], count[2];
  int n() const { return count[0] + count[1]; }
  int row(int r) const { return r < count[0] ? start[0] + r : start[1] + (r - count[0]); }
};

inline RowRuns block_runs(const RowBlock& blk, const janus::SampleMask& m, int q_split) {
  if (blk.i0 < q_split && blk.i1 >= q_split) {
    const int rows0 = std::min(m.rows(0), q_split) - blk.i0;
    return {{blk.i0, q_split}, {rows0, blk.i1 - q_split + 1}};
  }
  return {{blk.i0, 0}, {blk.i1 - blk.i0 + 1, 0}};
}

// Shapes and raw pointers of one forward call (both forward drivers; unpacked with a
// structured binding so the kernels keep short local names). Strides come from the tensors.
template <typename T>
struct FwdView {
  int B, H, Lq, d, Hkv, group, Lk;
  const T *qp, *kp, *vp;
  T* op;
  float* lp;
};

template <typename T>
inline FwdView<T> fwd_view(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           at::Tensor& out, at::Tensor& lse) {
  const int H = q.size(1), Hkv = k.size(1);
  return {(int)q.size(0), H, (int)q.size(2), (int)q.size(3), Hkv, H / Hkv, (int)k.size(2),
          q.data_ptr<T>(), k.data_ptr<T>(), v.data_ptr<T>(), out.data_ptr<T>(),
          lse.data_ptr<float>()};
}

// Row i's visible keys inside a key chunk [c0, c0 + w), in chunk columns: [0, a) U [ws, we)
// (both inside [0, w)), or per key through allowed() for the kinds whose ranges are inexact.
// Masks are applied to score vectors in registers (bits() + masked()): filling the masked
// entries with scalar stores and then reading the row as vectors made every such load wait
// on a failed store-to-load forward (a quarter of the forward's softmax time at IWSLT sizes).
struct RowVisible {
  const janus::SampleMask* m = nullptr;   // set only when the ranges are inexact
  int i = 0, c0 = 0, w = 0, a = 0, ws = 0, we = 0;

  RowVisible() = default;
  RowVisible(const janus::SampleMask& mask, int row, int chunk0, int width, bool full)
      : i(row), c0(chunk0), w(width) {
    if (full) { a = w; return; }   // the caller knows the tile is fully visible
    if (!mask.ranges_exact()) { m = &mask; return; }
    int pre, lo, hi;
    mask.row_ranges(i, &pre, &lo, &hi);
    a = std::clamp(pre - c0, 0, w);
    ws = std::clamp(lo - c0, 0, w);
    we = std::clamp(hi - c0, 0, w);
  }
  static constexpr uint32_t kAll = (1u << Vec::size()) - 1;
  // Lanes of the vector at chunk column t whose keys the row sees (bit l: column t + l);
  // columns at or past w are never visible.
  uint32_t bits(int t) const {
    constexpr int kW = Vec::size();
    if (m != nullptr) {
      uint32_t b = 0;
      for (int l = 0; l < kW && t + l < w; ++l) b |= uint32_t(m->allowed(i, c0 + t + l)) << l;
      return b;
    }
    auto run = [t](int x, int y) {   // lanes of [x, y) in the vector at t
      const int l0 = std::min(std::max(x - t, 0), (int)Vec::size());
      const int l1 = std::min(std::max(y - t, 0), (int)Vec::size());
      return ((1u << l1) - 1) & ~((1u << l0) - 1);
    };
    return run(0, a) | run(ws, we);
  }
};

// x with the lanes not set in bits replaced by v.
inline Vec masked(const Vec& x, uint32_t bits, const Vec& v) {
#if defined(CPU_CAPABILITY_AVX512)
  return Vec(_mm512_mask_blend_ps(static_cast<__mmask16>(bits), v, x));
#elif defined(CPU_CAPABILITY_AVX2)
  const __m256i lane = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  const __m256i on = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32((int)bits), lane), lane);
  return Vec(_mm256_blendv_ps(v, x, _mm256_castsi256_ps(on)));
#else
  alignas(64) float xs[Vec::size()], vs[Vec::size()];
  x.store(xs);
  v.store(vs);
  for (int l = 0; l < Vec::size(); ++l) if (!((bits >> l) & 1)) xs[l] = vs[l];
  return Vec::loadu(xs);
#endif
}

// Per-row visibility inside a key chunk [c0, c0 + w): fill masked entries of row `s` with v
// (the row-at-a-time forward, whose rows are runs at arbitrary offsets).
inline void mask_row_chunk(const janus::SampleMask& m, int i, int c0, int w, float* s, float v) {
  const RowVisible vis(m, i, c0, w, false);
  constexpr int kW = Vec::size();
  for (int t = 0; t < w; t += kW) {
    const uint32_t bits = vis.bits(t);
    for (int l = 0; l < kW && t + l < w; ++l) if (!((bits >> l) & 1)) s[t + l] = v;
  }
}

// Key chunks covering [0, pre) U [lo, hi) in pieces of at most `chunk`.
template <class F>
void for_each_key_chunk(int pre, int lo, int hi, int chunk, F&& f) {
  auto walk = [&](int a, int e) {
    for (int c = a; c < e; c += chunk) f(c, std::min(chunk, e - c));
  };
  if (hi <= lo) { walk(0, pre); return; }
  if (lo <= pre) { walk(0, std::max(pre, hi)); return; }
  walk(0, pre);
  walk(lo, hi);
}

// Run fn(item) for every item on all threads, largest first, pulled from an atomic counter.
// With a look-ahead callback each thread claims its next item before it runs the current one
// and calls look_ahead(next) first (the kernels queue the next item's rows for prefetching:
// small_gemm.h's PrefetchQueue).
template <class Item, class F, class LookAhead>
void run_dynamic(std::vector<Item>& items, F&& fn, LookAhead&& look_ahead, bool release_amx) {
  std::stable_sort(items.begin(), items.end(),
                   [](const Item& a, const Item& b) { return a.cost > b.cost; });
  std::atomic<int64_t> next{0};
  const int64_t n = (int64_t)items.size();
  const int nthreads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n));
  at::parallel_for(0, nthreads, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      int64_t k = next.fetch_add(1);
      while (k < n) {
        const int64_t k_next = next.fetch_add(1);
        if (k_next < n) look_ahead(items[k_next]);
        fn(items[k]);
        k = k_next;
      }
    }
    if (release_amx) at::native::cpublas::brgemm_release(true);  // per-thread tile context
  });
}

template <class Item, class F>
void run_dynamic(std::vector<Item>& items, F&& fn, bool release_amx = false) {
  run_dynamic(items, std::forward<F>(fn), [](const Item&) {}, release_amx);
}

// max without NaN bookkeeping (at::vec::maximum propagates NaN with two extra instructions
// per vector; a NaN score still reaches the output through exp).
inline Vec fast_max(const Vec& a, const Vec& b) {
#if defined(CPU_CAPABILITY_AVX512)
  return Vec(_mm512_max_ps(a, b));
#else
  return at::vec::maximum(a, b);
#endif
}

// Lane r of the result = op over the Vec::size() lanes of row r of part (a square block):
// one transpose and vertical ops instead of a horizontal reduction chain per row.
template <class Op>
inline Vec reduce_rows(const float* part, float* tmp, Op op) {
  constexpr int kW = Vec::size();
  janus_cpu::transpose32(kW, kW, part, kW, tmp, kW);
  Vec acc = Vec::loadu(tmp);
  for (int j = 1; j < kW; ++j) acc = op(acc, Vec::loadu(tmp + j * kW));
  return acc;
}

// Round two fp32 vectors to bf16 (nearest even) and store them: one instruction with
// AVX512-BF16 (Sapphire Rapids, Zen 4+), else torch's bit-manipulation conversion.
inline void store_bf16_pair(BFloat16* dst, const Vec& lo, const Vec& hi) {
#if defined(CPU_CAPABILITY_AVX512) && defined(__AVX512BF16__)
  const __m512bh packed = _mm512_cvtne2ps_pbh(hi, lo);
  _mm512_storeu_si512(reinterpret_cast<void*>(dst), reinterpret_cast<const __m512i&>(packed));
#else
  at::vec::convert_from_float<BFloat16>(lo, hi).store(dst);
#endif
};

// bf16 VNNI packing helpers (brgemm's bf16 B operand is [K/2][N][2]: pairs along K).
// B = X^T for X (n x d, row stride ld): a 32-bit transpose of X viewed as (n, d/2) pairs,
// dst [d/2][ld_dst][2]; d must be even.
inline void vnni_transpose(const BFloat16* src, int64_t n, int64_t d, int64_t ld,
                           BFloat16* dst, int64_t ld_dst) {
  const bool pairs_aligned = ld % 2 == 0 && reinterpret_cast<uintptr_t>(src) % 4 == 0;
  if (pairs_aligned) {
    janus_cpu::transpose32(n, d / 2, reinterpret_cast<const uint32_t*>(src), ld / 2,
                           reinterpret_cast<uint32_t*>(dst), ld_dst);
  } else {
    for (int64_t j = 0; j < n; ++j) {
      const BFloat16* row = src + j * ld;
      for (int64_t c = 0; c < d; ++c) dst[((c >> 1) * ld_dst + j) * 2 + (c & 1)] = row[c];
    }
  }
}

// B = X for X (n x d, row stride ld): rows 2t and 2t+1 interleaved, dst [pairs][d][2]; rows
// at or past n read as zero (pads K to an even count, or further).
inline void vnni_interleave_rows(const BFloat16* src, int64_t n, int64_t d, int64_t ld,
                                 int64_t pairs, BFloat16* dst) {
  uint32_t* out = reinterpret_cast<uint32_t*>(dst);
  for (int64_t j2 = 0; j2 < pairs; ++j2) {
    const int64_t j = 2 * j2;
    const uint16_t* r0 = reinterpret_cast<const uint16_t*>(src + j * ld);
    const uint16_t* r1 = reinterpret_cast<const uint16_t*>(src + (j + 1) * ld);
    uint32_t* o = out + j2 * d;
    if (j + 1 < n) {
      for (int64_t c = 0; c < d; ++c) o[c] = (uint32_t)r0[c] | ((uint32_t)r1[c] << 16);
    } else if (j < n) {
      for (int64_t c = 0; c < d; ++c) o[c] = (uint32_t)r0[c];
    } else {
      std::fill_n(o, d, 0u);
    }
  }
}

// Rows of (b, h) that no row block covers (padding rows, rows that see no key) are never
// computed; the first work item of each (b, h) writes them: zero output (and lse = -inf).
template <typename T>
void zero_uncovered_rows(const std::vector<RowBlock>& blocks, int Lq, int d, T* base,
                         int64_t row_stride, float* lse_base, bool nt) {
  auto zero = [&](int a, int e) {
    for (int i = a; i < e; ++i) {
      store_row(nullptr, base + (int64_t)i * row_stride, d, nt);
      if (lse_base) lse_base[i] = kNegInf;
    }
  };
  int next = 0;
  for (const auto& blk : blocks) {   // blocks are sorted by first row
    zero(next, blk.i0);
    next = blk.i1 + 1;
  }
  zero(next, Lq);
}

// fp32 rows of T: the tensor's own for fp32, else widened into scratch `slot` (row_io.h).
template <typename T>
inline std::pair<const float*, int64_t> rows_f32(const T* src, int64_t n, int64_t d, int64_t ld,
                                                 ScratchSlot slot) {
  if constexpr (std::is_same_v<T, float>) {
    return {src, ld};
  } else {
    float* dst = scratch<float>(slot, n * d);
    for (int64_t r = 0; r < n; ++r) widen_row(src + r * ld, dst + r * d, d);
    return {dst, d};
  }
}

// --------------------------------------------------------------------- entry points
// out / lse (and dq / dk / dv) are allocated by the caller in the inputs' dtype; every element
// is written. native_bf16: bf16 inputs with an even head dim run bf16 brgemm (AMX) tiles;
// otherwise bf16 / fp16 tiles are widened to fp32 as above.
// mods: the score modifiers (ScoreMods; the backward adds into mods.d_rel_bias).
void attention_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                   const MaskArgs& ma, float scale, const ScoreMods& mods, const Dropout& drop,
                   bool native_bf16, at::Tensor& out, at::Tensor& lse);
// The few-rows forward (attention_fwd_rows.cpp: dot products against the K rows, no K^T
// packing) serves calls of at most kFwdRowsMax query rows: a decoding step against a KV cache.
// JANUS_CPU_FWD_ROWS_MAX overrides that limit: 0 sends every call to the tiled forward, a
// large value every call to the rows path (the tests run both on the same cases).
constexpr int kFwdRowsMax = 4;
inline bool attention_fwd_rows_serves(int64_t Lq) {
  const char* e = std::getenv("JANUS_CPU_FWD_ROWS_MAX");
  return Lq <= (e ? std::max(std::atoi(e), 0) : kFwdRowsMax);
}
void attention_fwd_rows(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                        const MaskArgs& ma, float scale, const ScoreMods& mods,
                        const Dropout& drop, at::Tensor& out, at::Tensor& lse);
// The small-tile backward (attention_bwd_small.cpp: row-major tiles, inlined GEMMs) serves
// calls whose keys fit one backward chunk; attention_bwd picks it for them (except native
// bf16). JANUS_CPU_SMALL_TILES_MAX_KEYS (0 .. kChunkBwd, default kChunkBwd) lowers that limit:
// 0 sends every call to the brgemm driver (the tests run both drivers on the same cases) and
// every forward block to the general softmax (not the register tile, small_softmax_tile.h).
inline int small_tiles_max_keys() {
  const char* e = std::getenv("JANUS_CPU_SMALL_TILES_MAX_KEYS");
  return e ? std::clamp(std::atoi(e), 0, kChunkBwd) : kChunkBwd;
}
bool attention_bwd_small_serves(int64_t Lk, int64_t d);
void attention_bwd_small(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                         const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                         const MaskArgs& ma, float scale, const ScoreMods& mods,
                         const Dropout& drop, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv);
void attention_bwd(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                   const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                   const MaskArgs& ma, float scale, const ScoreMods& mods, const Dropout& drop,
                   bool native_bf16, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv);

}  // namespace janus_cpu
