// CPU flash attention with the structured mask generated on the fly (forward and backward).
//
// Algorithm (per (batch, head, block of rows of one stream)):
//   keys needed by the block = [0, pre) U [lo(first row), hi(last row))   (janus/mask.h)
//   for each chunk of those keys (dead key tiles are never touched):
//     S = Q_blk K_chunk^T                      oneDNN brgemm (fp32, or bf16 with VNNI-packed B)
//     mask: only tiles that are not FULL are masked, by per-row interval fills (no predicate
//           is evaluated per element except for the permutation kind)
//     online softmax (at::vec, AVX-512), O_acc = O_acc * exp(m_old - m_new) + P V_chunk
//   out = O_acc / l, lse = m + log(l); rows that see no key -> out 0, lse -inf.
// Backward per (batch, kv head): for each row block and key chunk, in transposed form so every
// brgemm has a plain row-major B operand (cpublas::brgemm cannot transpose B):
//   S^T = K Q^T, P^T = exp(scale S^T - lse), dV += P^T dO, dP^T = V dO^T,
//   dS^T = P^T (dP^T - delta), dK += scale dS^T Q, dQ^T += scale K^T dS^T.
// bf16 (even d) runs the same steps with bf16 VNNI brgemm operands and fp32 accumulators.
// Work is scheduled dynamically from an atomic counter (lengths are uneven per sample).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/native/CPUBlas.h>
#include <ATen/native/cpu/utils.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "janus/mask.h"
#include "janus/philox.h"
#include "output_pool.h"
#include "transpose.h"

namespace {

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

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Per-thread scratch kept across calls: grow-only, 64-byte aligned, NOT initialised (callers
// write before they read). Per-call std::vectors cost a malloc, a zero fill and first-touch
// page faults on every call, which at small shapes (IWSLT batches) rivalled the GEMMs.
// OpenMP's worker threads persist, so each keeps its buffers (sized by the largest call so
// far: a few hundred KB to a few MB per thread) for its lifetime.
enum ScratchSlot : int {
  kS, kAcc, kRowMax, kRowSum, kP, kKt, kV,              // forward
  kQt, kDot, kDqt, kDq, kPt, kDpt, kQv, kGv, kPb, kDs, kDsv, kDkAcc, kDvAcc,   // backward
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
  janus::SampleMask sample(int b) const {
    return janus::sample_mask(params, rank, rank_stride, b, q_split, kind);
  }
};

struct Dropout {
  float p = 0.f;
  uint32_t threshold = 0;
  uint64_t seed = 0;
  float inv_keep = 1.f;
  bool on() const { return p > 0.f; }
};

Dropout make_dropout(double p, const c10::optional<at::Tensor>& seed) {
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

// Row blocks of one stream: a work item is (b, h, first row, last row) with only valid rows.
struct RowBlock { int b, h, i0, i1; int64_t cost; };

std::vector<RowBlock> make_row_blocks(const MaskArgs& ma, int b_begin, int b_end, int H, int Lq,
                                      int block, bool per_head) {
  std::vector<RowBlock> items;
  for (int b = b_begin; b < b_end; ++b) {
    const auto m = ma.sample(b);
    auto add = [&](int i0, int i1) {
      int pre, lo, hi;
      m.block_ranges(i0, i1, &pre, &lo, &hi);
      const int64_t keys = (lo < pre) ? std::max(pre, hi) : pre + (hi - lo);
      if (keys <= 0) return;  // rows that see nothing: output stays 0, lse -inf
      const int64_t cost = keys * (i1 - i0 + 1);
      for (int h = 0; h < (per_head ? H : 1); ++h) items.push_back({b, h, i0, i1, cost});
    };
    // rows [a, e) in blocks of `block` rows (whole blocks first: the backward's GEMMs have
    // the rows as their N dimension, which brgemm runs much slower with a tail)
    auto cut = [&](int a, int e) {
      for (int i0 = a; i0 < e; i0 += block) add(i0, std::min(i0 + block, e) - 1);
    };
    for (int s = 0; s < 2; ++s) {
      const int start = s == 0 ? 0 : ma.q_split;
      const int stop = s == 0 ? ma.q_split : Lq;
      cut(start, std::min(stop, start + std::max(0, m.rows(s))));
    }
  }
  return items;
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
template <class Item, class F>
void run_dynamic(std::vector<Item>& items, F&& fn, bool release_amx = false) {
  std::stable_sort(items.begin(), items.end(),
                   [](const Item& a, const Item& b) { return a.cost > b.cost; });
  std::atomic<int64_t> next{0};
  const int64_t n = (int64_t)items.size();
  const int nthreads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n));
  at::parallel_for(0, nthreads, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      for (int64_t k = next.fetch_add(1); k < n; k = next.fetch_add(1)) fn(items[k]);
    }
    if (release_amx) at::native::cpublas::brgemm_release(true);  // per-thread tile context
  });
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

// Round two fp32 vectors to bf16 (nearest even) and store them: one instruction with
// AVX512-BF16 (Sapphire Rapids, Zen 4+), else torch's bit-manipulation conversion.
inline void store_bf16_pair(BFloat16* dst, const Vec& lo, const Vec& hi) {
#if defined(CPU_CAPABILITY_AVX512) && defined(__AVX512BF16__)
  const __m512bh packed = _mm512_cvtne2ps_pbh(hi, lo);
  _mm512_storeu_si512(reinterpret_cast<void*>(dst), reinterpret_cast<const __m512i&>(packed));
#else
  at::vec::convert_from_float<BFloat16>(lo, hi).store(dst);
#endif
}

// Per-row visibility inside a key chunk [c0, c0 + w): fill masked entries of row `s` with v.
inline void mask_row_chunk(const janus::SampleMask& m, int i, int c0, int w, float* s, float v) {
  if (m.kind == janus::KIND_PERMUTATION) {
    for (int t = 0; t < w; ++t) if (!m.allowed(i, c0 + t)) s[t] = v;
    return;
  }
  int pre, lo, hi;
  m.row_ranges(i, &pre, &lo, &hi);
  const int a = std::clamp(pre - c0, 0, w);
  const int ws = std::clamp(lo - c0, 0, w), we = std::clamp(hi - c0, 0, w);
  auto fill = [&](int x, int y) { for (int t = x; t < y; ++t) s[t] = v; };
  if (we <= ws) { fill(a, w); return; }     // no window inside the chunk
  if (ws <= a) { fill(std::max(a, we), w); return; }
  fill(a, ws);
  fill(we, w);
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

// Online-softmax step of one (row block, key chunk) tile of the forward. On entry S (rows x
// wr; wr a multiple of the vector width, of 32 for bf16) holds the raw scores of keys [c0, c0 + w); on exit S (fp32) or P
// (bf16) holds exp(scale s - m_new) with masked entries 0 (dropped and rescaled when dropout
// is on), mrow / lrow hold the new running max / sum and the acc rows are rescaled by
// exp(m_old - m_new). Rows go in groups of Vec::size(): the per-row max and sum are reduced
// for the whole group at once (reduce_rows), which at IWSLT-sized rows (~40 keys) halves the
// cost of the step against one horizontal reduction chain per row.
template <typename T>
void softmax_chunk(const janus::SampleMask& m, int i0, int rows, int c0, int w, int wr,
                   bool full, float scale, const Dropout& drop, int bh, float* S, T* P,
                   float* mrow, float* lrow, float* acc, int d) {
  constexpr bool kBf16 = std::is_same_v<T, BFloat16>;
  constexpr int kW = Vec::size();
  alignas(64) float part[kW * kW], tmp[kW * kW], m_use[kW], m_prev[kW], alpha_r[kW];
  const Vec vscale(scale), neg_inf(kNegInf), zero(0.f);
  for (int g0 = 0; g0 < rows; g0 += kW) {
    const int n = std::min(kW, rows - g0);
    // pass 1: mask, pad the rounded-up columns, per-row partial maxima
    for (int r = 0; r < kW; ++r) {
      Vec vm(kNegInf);
      if (r < n) {
        float* srow = S + (int64_t)(g0 + r) * wr;
        if (!full) mask_row_chunk(m, i0 + g0 + r, c0, w, srow, kNegInf);
        for (int t = w; t < wr; ++t) srow[t] = kNegInf;
        // four independent max chains: one chain is bound by vmaxps latency, not loads
        Vec v1(kNegInf), v2(kNegInf), v3(kNegInf);
        int t = 0;
        for (; t + 4 * kW <= wr; t += 4 * kW) {
          vm = fast_max(vm, Vec::loadu(srow + t));
          v1 = fast_max(v1, Vec::loadu(srow + t + kW));
          v2 = fast_max(v2, Vec::loadu(srow + t + 2 * kW));
          v3 = fast_max(v3, Vec::loadu(srow + t + 3 * kW));
        }
        for (; t < wr; t += kW) vm = fast_max(vm, Vec::loadu(srow + t));
        vm = fast_max(fast_max(vm, v1), fast_max(v2, v3));
      }
      vm.store(part + r * kW);
    }
    const Vec cmax = reduce_rows(part, tmp, [](const Vec& a, const Vec& b) { return fast_max(a, b); });
    const Vec m_old = Vec::loadu(mrow + g0, n);          // lanes >= n are unused
    const Vec m_new = fast_max(m_old, cmax * vscale);
    // exp offset: m_new, or 0 for rows that have seen nothing (exp(-inf - 0) = 0, not NaN)
    Vec::blendv(m_new, zero, m_new == neg_inf).store(m_use);
    // pass 2: P = exp(scale s - m) and per-row partial sums
    for (int r = 0; r < kW; ++r) {
      Vec vsum(0.f), vsum1(0.f);   // two sum chains (vaddps latency)
      if (r < n) {
        float* srow = S + (int64_t)(g0 + r) * wr;
        const Vec vmax(m_use[r]);
        if (kBf16 && !drop.on()) {   // exp, sum and the bf16 store of P in one pass
          BFloat16* prow = reinterpret_cast<BFloat16*>(P) + (int64_t)(g0 + r) * wr;
          for (int t = 0; t < wr; t += 2 * kW) {
            const Vec e0 = (Vec::loadu(srow + t) * vscale - vmax).exp_u20();
            const Vec e1 = (Vec::loadu(srow + t + kW) * vscale - vmax).exp_u20();
            vsum += e0;
            vsum1 += e1;
            store_bf16_pair(prow + t, e0, e1);
          }
        } else {
          int t = 0;
          for (; t + 2 * kW <= wr; t += 2 * kW) {
            const Vec e0 = (Vec::loadu(srow + t) * vscale - vmax).exp_u20();
            const Vec e1 = (Vec::loadu(srow + t + kW) * vscale - vmax).exp_u20();
            vsum += e0;
            vsum1 += e1;
            e0.store(srow + t);
            e1.store(srow + t + kW);
          }
          for (; t < wr; t += kW) {
            const Vec e = (Vec::loadu(srow + t) * vscale - vmax).exp_u20();
            vsum += e;
            e.store(srow + t);
          }
        }
      }
      (vsum + vsum1).store(part + r * kW);
    }
    const Vec sums = reduce_rows(part, tmp, [](const Vec& a, const Vec& b) { return a + b; });
    // alpha = exp(m_old - m_new); 0 where m_old = -inf (nothing accumulated yet)
    const Vec alpha = Vec::blendv((m_old - m_new).exp(), zero, m_old == neg_inf);
    (Vec::loadu(lrow + g0, n) * alpha + sums).store(lrow + g0, n);
    m_new.store(mrow + g0, n);
    alpha.store(alpha_r);
    m_old.store(m_prev);
    for (int r = 0; r < n; ++r) {
      if (alpha_r[r] != 1.f && m_prev[r] != kNegInf) {   // acc of a row that saw keys before
        float* arow = acc + (int64_t)(g0 + r) * d;
        const float a = alpha_r[r];
        at::vec::map([a](Vec x) { return x * Vec(a); }, arow, arow, d);
      }
      if (drop.on()) {
        float* srow = S + (int64_t)(g0 + r) * wr;
        const int i = i0 + g0 + r;
        for (int t = 0; t < w; ++t) {
          if (!janus::dropout_keep(drop.seed, drop.threshold, bh, i, c0 + t)) srow[t] = 0.f;
          else srow[t] *= drop.inv_keep;
        }
        if constexpr (kBf16) at::vec::convert(srow, P + (int64_t)(g0 + r) * wr, wr);
      }
    }
  }
}

// =========================================================================== forward
// K^T of one (b, kv head), packed per work item into thread-local scratch, real keys only:
// fp32 [d][Lkp]; bf16 VNNI [d/2][Lkp][2], and V for bf16 as VNNI [Lkp/2][d][2]. Columns
// past the sample's kv_len are zero so rounded-up chunk widths read defined memory.
template <typename T>
struct PackedHead {
  T* kt = nullptr;   // thread scratch
  T* v = nullptr;
  int64_t Lkp = 0;
  int b = -1, hk = -1;
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

template <typename T>
void pack_head(const T* kb, const T* vb, int64_t ks_l, int64_t vs_l, int kv_len, int d,
               PackedHead<T>& out) {
  constexpr bool kVnni = std::is_same_v<T, BFloat16>;
  constexpr int kPad = kVnni ? 32 : 16;  // chunk widths are rounded up to this
  out.Lkp = round_up(kv_len, kPad) + kPad;
  T* dst = out.kt = scratch<T>(kKt, d * out.Lkp);
  if constexpr (kVnni) {
    // K^T VNNI [d/2][Lkp][2] is a 32-bit transpose of K viewed as (kv_len, d/2) pairs.
    vnni_transpose(kb, kv_len, d, ks_l, dst, out.Lkp);
    for (int64_t c2 = 0; c2 < d / 2; ++c2)
      std::fill(dst + (c2 * out.Lkp + kv_len) * 2, dst + (c2 + 1) * out.Lkp * 2, T(0));
    // V VNNI [Lkp/2][d][2]: rows 2t and 2t+1 interleaved (zero past kv_len)
    out.v = scratch<T>(kV, out.Lkp * d);
    vnni_interleave_rows(vb, kv_len, d, vs_l, out.Lkp / 2, out.v);
  } else {
    janus_cpu::transpose32(kv_len, d, kb, ks_l, dst, out.Lkp);
    for (int64_t c = 0; c < d; ++c)
      std::fill(dst + c * out.Lkp + kv_len, dst + (c + 1) * out.Lkp, 0.f);
  }
}

// Rows of (b, h) that no row block covers (padding rows, rows that see no key) are never
// computed; the first work item of each (b, h) writes them: zero output (and lse = -inf).
template <typename T>
void zero_uncovered_rows(const std::vector<RowBlock>& blocks, int Lq, int d, T* base,
                         int64_t row_stride, float* lse_base) {
  auto zero = [&](int a, int e) {
    for (int i = a; i < e; ++i) {
      std::fill_n(base + (int64_t)i * row_stride, d, T(0));
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

// Forward work item: row blocks [blk_begin, blk_end) of sample b's block list, head h.
struct FwdItem { int b, h, blk_begin, blk_end; int64_t cost; };

template <typename T>
void attention_fwd_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                        const MaskArgs& ma, float scale, const Dropout& drop,
                        at::Tensor& out, at::Tensor& lse) {
  constexpr bool kBf16 = std::is_same_v<T, BFloat16>;
  const int B = q.size(0), H = q.size(1), Lq = q.size(2), d = q.size(3);
  const int Hkv = k.size(1), group = H / Hkv, Lk = k.size(2);
  const T* qp = q.data_ptr<T>();
  const T* kp = k.data_ptr<T>();
  const T* vp = v.data_ptr<T>();
  T* op = out.data_ptr<T>();
  float* lp = lse.data_ptr<float>();
  const auto qs = q.strides(), ks = k.strides(), vs = v.strides();
  const int64_t os_b = out.stride(0), os_h = out.stride(1), os_l = out.stride(2);
  const int64_t ls_b = lse.stride(0), ls_h = lse.stride(1);
  const int width_round = kBf16 ? 32 : 16;
  const int nthreads = at::get_num_threads();

  // Row blocks per sample; each (b, h) is one item (K packed once), split into a few items
  // only when there are too few heads to keep every thread busy.
  std::vector<std::vector<RowBlock>> blocks(B);
  for (int b = 0; b < B; ++b) blocks[b] = make_row_blocks(ma, b, b + 1, 1, Lq, kBlockM, false);
  const int splits = std::max<int64_t>(1, (4 * nthreads + (int64_t)B * H - 1) / ((int64_t)B * H));
  std::vector<FwdItem> items;
  for (int b = 0; b < B; ++b) {
    const int nb = (int)blocks[b].size();
    const int parts = std::max(1, std::min(nb, splits));  // >= 1: someone zeroes the rows
    for (int h = 0; h < H; ++h)
      for (int p = 0; p < parts; ++p) {
        const int s0 = nb * p / parts, s1 = nb * (p + 1) / parts;
        int64_t cost = 0;
        for (int x = s0; x < s1; ++x) cost += blocks[b][x].cost;
        items.push_back({b, h, s0, s1, cost});
      }
  }
  // which (b, kv head) each thread has packed in this call
  std::vector<PackedHead<T>> heads(nthreads);

  run_dynamic(items, [&](const FwdItem& item) {
    const int tid = at::get_thread_num();
    const int b = item.b, h = item.h, hk = h / group;
    PackedHead<T>& ph = heads[tid];
    const auto m = ma.sample(b);
    if (ph.b != b || ph.hk != hk) {
      pack_head<T>(kp + b * ks[0] + hk * ks[1], vp + b * vs[0] + hk * vs[1], ks[2], vs[2],
                   std::min(m.kv_len(), Lk), d, ph);
      ph.b = b;
      ph.hk = hk;
    }
    const int64_t Lkp = ph.Lkp;
    const T* kt = ph.kt;
    if (item.blk_begin == 0)
      zero_uncovered_rows<T>(blocks[b], Lq, d, op + b * os_b + h * os_h, os_l,
                             lp + b * ls_b + h * ls_h);
    for (int x = item.blk_begin; x < item.blk_end; ++x) {
      const RowBlock& it = blocks[b][x];
      float* S = scratch<float>(kS, (int64_t)kBlockM * kChunkFwd);
      float* acc = scratch<float>(kAcc, (int64_t)kBlockM * d);
      float* mrow = scratch<float>(kRowMax, kBlockM);
      float* lrow = scratch<float>(kRowSum, kBlockM);
      T* P = kBf16 ? scratch<T>(kP, (int64_t)kBlockM * kChunkFwd) : nullptr;
      const int rows = it.i1 - it.i0 + 1;
      const T* qblk = qp + b * qs[0] + h * qs[1] + (int64_t)it.i0 * qs[2];
      std::fill_n(acc, (int64_t)rows * d, 0.f);
      std::fill_n(mrow, rows, kNegInf);
      std::fill_n(lrow, rows, 0.f);
      int pre, lo, hi;
      m.block_ranges(it.i0, it.i1, &pre, &lo, &hi);
      if (kBf16 && hi > lo) lo &= ~1;  // VNNI pairs keys (2t, 2t+1): chunks start at even keys

      for_each_key_chunk(pre, lo, hi, kChunkFwd, [&](int c0, int w) {
        const int wr = std::min<int>(round_up(w, width_round), kChunkFwd);
        // S = Q K^T over the rounded-up width (brgemm runs N tails far slower than whole
        // vectors; K^T is zero past kv_len); columns [w, wr) are masked below.
        if constexpr (kBf16) {
          at::native::cpublas::brgemm(rows, wr, d, qs[2], Lkp, wr, false, qblk, kt + c0 * 2, S,
                                      true);
        } else {
          at::native::cpublas::brgemm(rows, wr, d, qs[2], Lkp, wr, false, qblk, kt + c0, S);
        }
        const bool full = m.tile_class(it.i0, it.i1, c0, c0 + w - 1) == janus::TILE_FULL;
        softmax_chunk<T>(m, it.i0, rows, c0, w, wr, full, scale, drop, b * H + h, S, P, mrow,
                         lrow, acc, d);
        // O_acc += P V_chunk
        if constexpr (kBf16) {
          const T* vchunk = ph.v + (int64_t)c0 * d;
          at::native::cpublas::brgemm(rows, d, wr, wr, d, d, true, P, vchunk, acc, true);
        } else {
          const T* vchunk = vp + b * vs[0] + hk * vs[1] + (int64_t)c0 * vs[2];
          // only the w real keys: V has no padded rows to read beyond Lk
          at::native::cpublas::brgemm(rows, d, w, wr, vs[2], d, true, S, vchunk, acc);
        }
      });

      for (int r = 0; r < rows; ++r) {
        const int i = it.i0 + r;
        T* orow = op + b * os_b + h * os_h + (int64_t)i * os_l;
        const float l = lrow[r];
        if (l > 0.f) {
          const float inv = 1.f / l;
          const float* arow = acc + (int64_t)r * d;
          for (int c = 0; c < d; ++c) orow[c] = T(arow[c] * inv);
          lp[b * ls_b + h * ls_h + i] = mrow[r] + std::log(l);
        } else {  // a valid row that sees no key
          std::fill_n(orow, d, T(0));
          lp[b * ls_b + h * ls_h + i] = kNegInf;
        }
      }
    }  // row blocks of the item
  }, /*release_amx=*/kBf16);
  (void)Lk;
}

// ========================================================================== backward
// Shared by the fp32 and the native bf16 backward: work items, per-row statistics of a row
// block, and the elementwise P / dS step (always fp32).

// One item per (b, kv head): it owns dK/dV of that head and dQ of its query heads.
struct BwdItem { int b, hk; int64_t cost; };

std::vector<BwdItem> make_bwd_items(const MaskArgs& ma, int B, int Hkv) {
  std::vector<BwdItem> items;
  for (int b = 0; b < B; ++b) {
    const auto m = ma.sample(b);
    const int64_t cost = (int64_t)m.kv_len() * (m.rows(0) + m.rows(1));
    for (int hk = 0; hk < Hkv; ++hk) items.push_back({b, hk, cost});
  }
  return items;
}

// Per-row data of a row block: delta = rowsum(dO * O), lse (-inf -> +inf so exp gives 0 for
// rows that see nothing), and each row's key ranges.
struct BwdRowStats {
  std::vector<float> delta, lse, tmp;
  std::vector<int> pre, lo, hi;
  void resize(int n, int d) {
    delta.resize(n); lse.resize(n); pre.resize(n); lo.resize(n); hi.resize(n); tmp.resize(2 * d);
  }
};

// bf16 -> fp32 (at::vec::convert does this element by element)
inline void widen_row(const BFloat16* src, float* dst, int n) {
  using VecB = at::vec::Vectorized<BFloat16>;
  int c = 0;
  for (; c + VecB::size() <= n; c += VecB::size()) {
    auto [lo, hi] = at::vec::convert_to_float<BFloat16>(VecB::loadu(src + c));
    lo.store(dst + c);
    hi.store(dst + c + Vec::size());
  }
  for (; c < n; ++c) dst[c] = (float)src[c];
}

template <typename T>
void bwd_row_stats(const janus::SampleMask& m, int i0, int rows, int d, const T* gblk,
                   int64_t gs_l, const T* oblk, int64_t os_l, const float* lrow, int64_t ls_l,
                   BwdRowStats& st) {
  for (int r = 0; r < rows; ++r) {
    const float* g = reinterpret_cast<const float*>(gblk + r * gs_l);
    const float* o = reinterpret_cast<const float*>(oblk + r * os_l);
    if constexpr (!std::is_same_v<T, float>) {   // widen the two rows once (vectorized)
      widen_row(gblk + r * gs_l, st.tmp.data(), d);
      widen_row(oblk + r * os_l, st.tmp.data() + d, d);
      g = st.tmp.data();
      o = st.tmp.data() + d;
    }
    Vec vacc(0.f);
    int c = 0;
    for (; c + Vec::size() <= d; c += Vec::size()) vacc += Vec::loadu(g + c) * Vec::loadu(o + c);
    float acc = at::vec::vec_reduce_all<float>([](Vec& x, Vec& y) { return x + y; }, vacc);
    for (; c < d; ++c) acc += g[c] * o[c];
    st.delta[r] = acc;
    const float l = lrow[(int64_t)r * ls_l];
    st.lse[r] = (l == kNegInf) ? std::numeric_limits<float>::infinity() : l;
    m.row_ranges(i0 + r, &st.pre[r], &st.lo[r], &st.hi[r]);
  }
}

// Elementwise step of one (row block, key chunk) tile, in transposed form (w x rows, ld rows):
// on entry pt = S^T and dpt = dP^T; on exit pt = P^T (dropped when dropout is on: it feeds dV)
// and dpt = dS^T = P^T (keep dP^T / (1-p) - delta) (unscaled). emit(t, prow, dsrow) is called
// after key row t is final, while it is still in cache.
template <class Emit>
void bwd_p_ds_tile(const janus::SampleMask& m, int i0, int i1, int c0, int w, float scale,
                   const Dropout& drop, int bh, const BwdRowStats& st, float* pt, float* dpt,
                   Emit&& emit) {
  const int rows = i1 - i0 + 1;
  const bool full = m.tile_class(i0, i1, c0, c0 + w - 1) == janus::TILE_FULL;
  const Vec vscale(scale);
  for (int t = 0; t < w; ++t) {
    const int j = c0 + t;
    float* prow = pt + (int64_t)t * rows;
    float* dprow = dpt + (int64_t)t * rows;
    int64_t r = 0;
    for (; r < rows; r += Vec::size()) {   // partial load/store on the tail
      const int n = std::min<int>(Vec::size(), rows - r);
      Vec p = (Vec::loadu(prow + r, n) * vscale - Vec::loadu(st.lse.data() + r, n)).exp_u20();
      p.store(prow + r, n);
    }
    if (!full && m.kind == janus::KIND_PERMUTATION) {
      for (int rr = 0; rr < rows; ++rr) if (!m.allowed(i0 + rr, j)) prow[rr] = 0.f;
    } else if (!full) {   // branch-free so the compiler vectorizes it over rows
      const int* pre = st.pre.data();
      const int* lo = st.lo.data();
      const int* hi = st.hi.data();
      for (int rr = 0; rr < rows; ++rr) {
        const bool ok = (j < pre[rr]) | ((lo[rr] <= j) & (j < hi[rr]));
        prow[rr] = ok ? prow[rr] : 0.f;
      }
    }
    if (drop.on()) {
      for (int rr = 0; rr < rows; ++rr) {
        const bool keep = janus::dropout_keep(drop.seed, drop.threshold, bh, i0 + rr, j);
        const float kscale = keep ? drop.inv_keep : 0.f;
        dprow[rr] = prow[rr] * (dprow[rr] * kscale - st.delta[rr]);
        prow[rr] *= kscale;   // now P_dropped^T (for dV)
      }
    } else {
      for (int rr = 0; rr < rows; ++rr) dprow[rr] = prow[rr] * (dprow[rr] - st.delta[rr]);
    }
    emit(t, prow, dprow);
  }
}

// Shapes, raw pointers and strides of one backward call, shared by the fp32 and bf16 paths
// (unpacked with a structured binding so the kernels keep short local names).
template <typename T>
struct BwdView {
  int B, H, Lq, d, Hkv, group, Lk;
  const T *qp, *kp, *vp, *op, *gp;
  const float* lp;
  T *dqp, *dkp, *dvp;
  c10::IntArrayRef qs, ks, vs, os, gs, lss;
};

template <typename T>
BwdView<T> bwd_view(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                    const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                    at::Tensor& dq, at::Tensor& dk, at::Tensor& dv) {
  const int H = q.size(1), Hkv = k.size(1);
  return {(int)q.size(0), H, (int)q.size(2), (int)q.size(3), Hkv, H / Hkv, (int)k.size(2),
          q.data_ptr<T>(), k.data_ptr<T>(), v.data_ptr<T>(), out.data_ptr<T>(),
          dout.data_ptr<T>(), lse.data_ptr<float>(),
          dq.data_ptr<T>(), dk.data_ptr<T>(), dv.data_ptr<T>(),
          q.strides(), k.strides(), v.strides(), out.strides(), dout.strides(), lse.strides()};
}

// Per-item state shared by the fp32 and bf16 backward: the thread's scratch blocks, the
// sample's kv_len, and dK / dV accumulated in fp32 scratch (cache-resident; zeroed only over
// the keys chunks can reach) and written to the fresh outputs once, padding keys as zeros.
template <typename T>
struct BwdItemScratch {
  BwdRowStats& st;
  T *kt, *qt, *dot;            // K^T [d][Lkp], Q^T and dO^T of a row block
  float *dqt, *pt, *dpt;       // dQ^T of a row block, S^T / P^T and dP^T / dS^T of a tile
  float *dkacc, *dvacc;
  int kv;
  BwdItemScratch(std::vector<BwdRowStats>& stats, const janus::SampleMask& m, int d,
                 int64_t Lkp, int Lk)
      : st(stats[at::get_thread_num()]),
        kt(scratch<T>(kKt, d * Lkp)),
        qt(scratch<T>(kQt, d * kBlockMBwd)),
        dot(scratch<T>(kDot, d * kBlockMBwd)),
        dqt(scratch<float>(kDqt, d * kBlockMBwd)),
        pt(scratch<float>(kPt, kChunkBwd * kBlockMBwd)),
        dpt(scratch<float>(kDpt, kChunkBwd * kBlockMBwd)),
        dkacc(scratch<float>(kDkAcc, (int64_t)Lk * d)),
        dvacc(scratch<float>(kDvAcc, (int64_t)Lk * d)),
        kv(std::min(m.kv_len(), Lk)) {   // key chunks never reach past kv_len
    st.resize(kBlockMBwd, d);
    std::fill_n(dkacc, (int64_t)kv * d, 0.f);
    std::fill_n(dvacc, (int64_t)kv * d, 0.f);
  }
  void write_dkdv(T* dkb, T* dvb, int Lk, int d) const {
    at::vec::convert(dkacc, dkb, (int64_t)kv * d);
    at::vec::convert(dvacc, dvb, (int64_t)kv * d);
    std::fill_n(dkb + (int64_t)kv * d, (int64_t)(Lk - kv) * d, T(0));
    std::fill_n(dvb + (int64_t)kv * d, (int64_t)(Lk - kv) * d, T(0));
  }
};

// fp32 backward (fp16, fp64 and odd-d bf16 inputs are upcast to fp32 by the caller).
void attention_bwd_impl(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                        const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                        const MaskArgs& ma, float scale, const Dropout& drop,
                        at::Tensor& dq, at::Tensor& dk, at::Tensor& dv) {
  const auto [B, H, Lq, d, Hkv, group, Lk, qp, kp, vp, op, gp, lp, dqp, dkp, dvp,
              qs, ks, vs, os, gs, lss] = bwd_view<float>(dout, q, k, v, out, lse, dq, dk, dv);
  const int64_t Lkp = round_up(Lk, 16) + 16;

  std::vector<BwdItem> items = make_bwd_items(ma, B, Hkv);
  const int nthreads = at::get_num_threads();
  std::vector<BwdRowStats> stats(nthreads);

  run_dynamic(items, [&](const BwdItem& it) {
    const int b = it.b, hk = it.hk;
    const auto m = ma.sample(b);
    const BwdItemScratch<float> sc(stats, m, d, Lkp, Lk);
    auto [st, kt, qt, dot, dqt, pt, dpt, dkacc, dvacc, kv] = sc;
    const float* kb = kp + b * ks[0] + hk * ks[1];
    const float* vb = vp + b * vs[0] + hk * vs[1];
    // K^T [d][Lkp] for dQ^T += K^T dS^T (SIMD transposes: at small shapes scalar ones cost
    // as much as the GEMMs)
    janus_cpu::transpose32(Lk, d, kb, ks[2], kt, Lkp);
    const auto blocks = make_row_blocks(ma, b, b + 1, 1, Lq, kBlockMBwd, false);

    for (int h = hk * group; h < (hk + 1) * group; ++h) {
      const int bh = b * H + h;
      zero_uncovered_rows<float>(blocks, Lq, d, dqp + ((int64_t)b * H + h) * Lq * d, d, nullptr);
      for (const auto& blk : blocks) {
        const int i0 = blk.i0, rows = blk.i1 - blk.i0 + 1;
        const float* qblk = qp + b * qs[0] + h * qs[1] + (int64_t)i0 * qs[2];
        const float* gblk = gp + b * gs[0] + h * gs[1] + (int64_t)i0 * gs[2];
        const float* oblk = op + b * os[0] + h * os[1] + (int64_t)i0 * os[2];
        bwd_row_stats<float>(m, i0, rows, d, gblk, gs[2], oblk, os[2],
                             lp + b * lss[0] + h * lss[1] + (int64_t)i0 * lss[2], lss[2], st);
        // Q^T, dO^T [d][rows]
        janus_cpu::transpose32(rows, d, qblk, qs[2], qt, rows);
        janus_cpu::transpose32(rows, d, gblk, gs[2], dot, rows);
        std::fill_n(dqt, (int64_t)d * rows, 0.f);
        int pre, lo, hi;
        m.block_ranges(i0, blk.i1, &pre, &lo, &hi);
        for_each_key_chunk(pre, lo, hi, kChunkBwd, [&](int c0, int w) {
          // S^T = K_chunk Q^T  (w x rows)
          at::native::cpublas::brgemm(w, rows, d, ks[2], rows, rows, false, kb + c0 * ks[2],
                                      qt, pt);
          // dP^T = V_chunk dO^T
          at::native::cpublas::brgemm(w, rows, d, vs[2], rows, rows, false, vb + c0 * vs[2],
                                      dot, dpt);
          // dV += P^T dO ; dK += scale dS^T Q ; dQ^T += scale K^T dS^T
          // (dV uses the unscaled P^T, so dS^T is scaled row by row as it is produced)
          bwd_p_ds_tile(m, i0, blk.i1, c0, w, scale, drop, bh, st, pt, dpt,
                        [&](int, float*, float* dsrow) {
                          for (int r = 0; r < rows; ++r) dsrow[r] *= scale;
                        });
          at::native::cpublas::brgemm(w, d, rows, rows, gs[2], d, true, pt, gblk,
                                      dvacc + (int64_t)c0 * d);
          at::native::cpublas::brgemm(w, d, rows, rows, qs[2], d, true, dpt, qblk,
                                      dkacc + (int64_t)c0 * d);
          at::native::cpublas::brgemm(d, rows, w, Lkp, rows, rows, true, kt + c0, dpt, dqt);
        });
        float* dqblk = dqp + (((int64_t)b * H + h) * Lq + i0) * d;  // dq contiguous
        janus_cpu::transpose32(d, rows, dqt, rows, dqblk, d);
      }
    }
    // dk, dv contiguous (allocated here)
    sc.write_dkdv(dkp + ((int64_t)b * Hkv + hk) * Lk * d, dvp + ((int64_t)b * Hkv + hk) * Lk * d,
                  Lk, d);
  });
}

// Native bf16 backward (d even): the same items, blocks, chunks and P/dS step as the fp32 one,
// with bf16 brgemm operands (B always VNNI [K/2][N][2]) and fp32 accumulation:
//   S^T  = K_chunk Q^T        A = K rows,  B = Q^T  VNNI (32-bit transpose of the Q block)
//   dP^T = V_chunk dO^T       A = V rows,  B = dO^T VNNI
//   dV  += P^T dO             A = bf16 P^T [w][rows2], B = dO VNNI [rows2/2][d][2]
//   dK  += (scale dS^T) Q     A = bf16 scale dS^T,     B = Q  VNNI
//   dQ^T += K^T (scale dS^T)  A = plain bf16 K^T [d][Lkp], B = scale dS^T VNNI [w2/2][rows][2]
// rows2 / w2 are rounded up to even; the extra columns of A / rows of B are zero. dK and dV
// accumulate in fp32 per item, dQ^T per row block, and are rounded to bf16 at the end.
void attention_bwd_impl_bf16(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                             const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                             const MaskArgs& ma, float scale, const Dropout& drop,
                             at::Tensor& dq, at::Tensor& dk, at::Tensor& dv) {
  using T = BFloat16;
  using at::native::cpublas::brgemm;
  const auto [B, H, Lq, d, Hkv, group, Lk, qp, kp, vp, op, gp, lp, dqp, dkp, dvp,
              qs, ks, vs, os, gs, lss] = bwd_view<T>(dout, q, k, v, out, lse, dq, dk, dv);
  TORCH_INTERNAL_ASSERT(d % 2 == 0, "bf16 backward: VNNI needs an even head dim");
  const int64_t Lkp = round_up(Lk, 16) + 16;   // K^T columns past Lk are zero

  std::vector<BwdItem> items = make_bwd_items(ma, B, Hkv);
  const int nthreads = at::get_num_threads();
  std::vector<BwdRowStats> stats(nthreads);
  constexpr int kM = kBlockMBwd, kC = kChunkBwd;   // both even

  run_dynamic(items, [&](const BwdItem& it) {
    const int b = it.b, hk = it.hk;
    const auto m = ma.sample(b);
    const BwdItemScratch<T> sc(stats, m, d, Lkp, Lk);
    auto [st, kt, qt, dot, dqt, pt, dpt, dkacc, dvacc, kv] = sc;
    T* qv = scratch<T>(kQv, d * kM);
    T* gv = scratch<T>(kGv, d * kM);
    T* p = scratch<T>(kPb, kC * kM);
    T* ds = scratch<T>(kDs, kC * kM);
    T* dsv = scratch<T>(kDsv, kC * kM);
    float* dqf = scratch<float>(kDq, d * kM);
    const T* kb = kp + b * ks[0] + hk * ks[1];
    const T* vb = vp + b * vs[0] + hk * vs[1];
    // plain K^T [d][Lkp] (the A operand of dQ^T += K^T dS^T; zero past Lk)
    at::native::utils::transpose<uint16_t>(Lk, d, reinterpret_cast<const uint16_t*>(kb), ks[2],
                                           reinterpret_cast<uint16_t*>(kt), Lkp);
    for (int64_t c = 0; c < d; ++c) std::fill(kt + c * Lkp + Lk, kt + (c + 1) * Lkp, T(0));
    const auto blocks = make_row_blocks(ma, b, b + 1, 1, Lq, kBlockMBwd, false);

    for (int h = hk * group; h < (hk + 1) * group; ++h) {
      const int bh = b * H + h;
      zero_uncovered_rows<T>(blocks, Lq, d, dqp + ((int64_t)b * H + h) * Lq * d, d, nullptr);
      for (const auto& blk : blocks) {
        const int i0 = blk.i0, rows = blk.i1 - blk.i0 + 1;
        const int rows2 = (int)round_up(rows, 2);
        const T* qblk = qp + b * qs[0] + h * qs[1] + (int64_t)i0 * qs[2];
        const T* gblk = gp + b * gs[0] + h * gs[1] + (int64_t)i0 * gs[2];
        const T* oblk = op + b * os[0] + h * os[1] + (int64_t)i0 * os[2];
        bwd_row_stats<T>(m, i0, rows, d, gblk, gs[2], oblk, os[2],
                         lp + b * lss[0] + h * lss[1] + (int64_t)i0 * lss[2], lss[2], st);
        vnni_transpose(qblk, rows, d, qs[2], qt, rows);     // [d/2][rows][2]
        vnni_transpose(gblk, rows, d, gs[2], dot, rows);
        vnni_interleave_rows(qblk, rows, d, qs[2], rows2 / 2, qv);   // [rows2/2][d][2]
        vnni_interleave_rows(gblk, rows, d, gs[2], rows2 / 2, gv);
        std::fill_n(dqt, (int64_t)d * rows, 0.f);
        int pre, lo, hi;
        m.block_ranges(i0, blk.i1, &pre, &lo, &hi);
        for_each_key_chunk(pre, lo, hi, kChunkBwd, [&](int c0, int w) {
          brgemm(w, rows, d, ks[2], rows, rows, false, kb + c0 * ks[2], qt, pt, true);
          brgemm(w, rows, d, vs[2], rows, rows, false, vb + c0 * vs[2], dot, dpt, true);
          bwd_p_ds_tile(m, i0, blk.i1, c0, w, scale, drop, bh, st, pt, dpt,
                        [&](int t, float* prow, float* dsrow) {
                          T* pb = p + (int64_t)t * rows2;
                          T* db = ds + (int64_t)t * rows2;
                          at::vec::convert(prow, pb, rows);
                          for (int r = 0; r < rows; ++r) dsrow[r] *= scale;
                          at::vec::convert(dsrow, db, rows);
                          if (rows2 != rows) { pb[rows] = T(0); db[rows] = T(0); }
                        });
          const int w2 = (int)round_up(w, 2);
          vnni_interleave_rows(ds, w, rows, rows2, w2 / 2, dsv);  // [w2/2][rows][2]
          brgemm(w, d, rows2, rows2, d, d, true, p, gv, dvacc + c0 * d, true);
          brgemm(w, d, rows2, rows2, d, d, true, ds, qv, dkacc + c0 * d, true);
          brgemm(d, rows, w2, Lkp, rows, rows, true, kt + c0, dsv, dqt, true);
        });
        // dQ = (dQ^T)^T, rounded to bf16 (dq contiguous)
        janus_cpu::transpose32(d, rows, dqt, rows, dqf, d);
        at::vec::convert(dqf, dqp + (((int64_t)b * H + h) * Lq + i0) * d, (int64_t)rows * d);
      }
    }
    // dk, dv contiguous (allocated here)
    sc.write_dkdv(dkp + ((int64_t)b * Hkv + hk) * Lk * d, dvp + ((int64_t)b * Hkv + hk) * Lk * d,
                  Lk, d);
  }, /*release_amx=*/true);
}

// ============================================================================ glue
void check_common(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const at::Tensor& params, const c10::optional<at::Tensor>& rank,
                  int64_t q_split, int64_t kind) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4,
              "q, k, v: expected 4-D (B, H, L, d) tensors");
  TORCH_CHECK(q.device().is_cpu() && k.device().is_cpu() && v.device().is_cpu(),
              "q, k, v: the cpp attention backend runs on CPU tensors");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(),
              "q, k, v: must share a dtype");
  TORCH_CHECK(k.sizes() == v.sizes(), "k, v: must have the same shape");
  TORCH_CHECK(k.size(0) == q.size(0) && k.size(3) == q.size(3),
              "k: expected (B, Hkv, Lk, d) matching q's B and d");
  TORCH_CHECK(k.size(1) > 0 && q.size(1) % k.size(1) == 0,
              "q, k: q heads must be a multiple of k/v heads");
  TORCH_CHECK(params.dtype() == at::kInt && params.dim() == 2 &&
                  params.size(0) == q.size(0) && params.size(1) == janus::NUM_FIELDS,
              "mask_params: expected int32 (B, ", janus::NUM_FIELDS, ")");
  TORCH_CHECK(q_split >= 0 && q_split <= q.size(2), "q_split: must be in [0, Lq]");
  TORCH_CHECK(kind == janus::KIND_WINDOW || kind == janus::KIND_PERMUTATION,
              "mask_kind: must be 0 (window) or 1 (permutation)");
  if (kind == janus::KIND_PERMUTATION)
    TORCH_CHECK(rank.has_value() && rank->dtype() == at::kInt && rank->dim() == 2 &&
                    rank->size(0) == q.size(0) && rank->size(1) == k.size(2),
                "mask_rank: the permutation kind needs int32 (B, Lk)");
}

// Contiguous copies of the descriptor tensors (kept alive) and the raw view the kernels read.
struct MaskTensors {
  at::Tensor params, rank;
  MaskArgs args;
  MaskTensors(const at::Tensor& p, const c10::optional<at::Tensor>& r, int64_t q_split,
              int64_t kind)
      : params(p.contiguous()), rank(r ? r->contiguous() : at::Tensor()) {
    args = MaskArgs{params.data_ptr<int32_t>(), rank.defined() ? rank.data_ptr<int32_t>() : nullptr,
                    rank.defined() ? rank.size(1) : 0, (int)q_split, (int)kind};
  }
};

// brgemm needs unit stride in the last dim; everything else is handled through strides.
at::Tensor last_dim_contiguous(const at::Tensor& t) {
  return t.stride(-1) == 1 ? t : t.contiguous();
}

std::tuple<at::Tensor, at::Tensor> flash_attention_fwd_cpu(
    const at::Tensor& q_, const at::Tensor& k_, const at::Tensor& v_,
    const at::Tensor& params_, const c10::optional<at::Tensor>& rank_, int64_t q_split,
    int64_t kind, double scale, double dropout_p, const c10::optional<at::Tensor>& seed) {
  check_common(q_, k_, v_, params_, rank_, q_split, kind);
  const MaskTensors mt(params_, rank_, q_split, kind);
  const MaskArgs& ma = mt.args;
  const Dropout drop = make_dropout(dropout_p, seed);
  const auto dt = q_.scalar_type();
  const int64_t d = q_.size(3);
  // bf16 runs natively (VNNI needs an even head dim); fp16/fp64/odd-d bf16 are computed in fp32
  const bool native_bf16 = dt == at::kBFloat16 && d % 2 == 0;
  const auto ct = (dt == at::kFloat || native_bf16) ? dt : at::kFloat;
  at::Tensor q = last_dim_contiguous(q_.to(ct)), k = last_dim_contiguous(k_.to(ct)),
             v = last_dim_contiguous(v_.to(ct));
  // every row is written by the kernel (computed, or zeroed as uncovered); large outputs
  // come from the pool of mapped blocks (first-touch page faults cost as much as the kernel
  // at IWSLT-sized batches)
  at::Tensor out = janus_cpu::pooled_empty(q.sizes(), q.options(), kPoolMinBytes);
  at::Tensor lse = at::empty({q.size(0), q.size(1), q.size(2)}, q.options().dtype(at::kFloat));
  if (q.numel() > 0 && k.size(2) > 0) {
    if (native_bf16)
      attention_fwd_impl<BFloat16>(q, k, v, ma, (float)scale, drop, out, lse);
    else
      attention_fwd_impl<float>(q, k, v, ma, (float)scale, drop, out, lse);
  } else {
    out.zero_();
    lse.fill_(-INFINITY);
  }
  return {out.to(dt), lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> flash_attention_bwd_cpu(
    const at::Tensor& dout_, const at::Tensor& q_, const at::Tensor& k_, const at::Tensor& v_,
    const at::Tensor& out_, const at::Tensor& lse_, const at::Tensor& params_,
    const c10::optional<at::Tensor>& rank_, int64_t q_split, int64_t kind, double scale,
    double dropout_p, const c10::optional<at::Tensor>& seed) {
  check_common(q_, k_, v_, params_, rank_, q_split, kind);
  TORCH_CHECK(dout_.sizes() == q_.sizes() && out_.sizes() == q_.sizes(),
              "grad_out, out: must have q's shape");
  TORCH_CHECK(lse_.dim() == 3 && lse_.size(0) == q_.size(0) && lse_.size(1) == q_.size(1) &&
                  lse_.size(2) == q_.size(2) && lse_.scalar_type() == at::kFloat,
              "lse: expected float32 (B, H, Lq)");
  const MaskTensors mt(params_, rank_, q_split, kind);
  const MaskArgs& ma = mt.args;
  const Dropout drop = make_dropout(dropout_p, seed);
  const auto dt = q_.scalar_type();
  // bf16 runs natively when d is even (VNNI pairs along d); everything else in fp32
  const bool native_bf16 = dt == at::kBFloat16 && q_.size(3) % 2 == 0;
  const auto ct = native_bf16 ? dt : at::kFloat;
  auto cvt = [ct](const at::Tensor& t) { return last_dim_contiguous(t.to(ct)); };
  at::Tensor q = cvt(q_), k = cvt(k_), v = cvt(v_), o = cvt(out_), g = cvt(dout_);
  at::Tensor lse = lse_.contiguous();
  // written (or zeroed) per work item, in parallel, by the thread that owns them
  at::Tensor dq = janus_cpu::pooled_empty(q.sizes(), q.options(), kPoolMinBytes);
  at::Tensor dk = janus_cpu::pooled_empty(k.sizes(), k.options(), kPoolMinBytes);
  at::Tensor dv = janus_cpu::pooled_empty(v.sizes(), v.options(), kPoolMinBytes);
  if (q.numel() > 0 && k.size(2) > 0) {
    if (native_bf16)
      attention_bwd_impl_bf16(g, q, k, v, o, lse, ma, (float)scale, drop, dq, dk, dv);
    else
      attention_bwd_impl(g, q, k, v, o, lse, ma, (float)scale, drop, dq, dk, dv);
  } else {
    dq.zero_(); dk.zero_(); dv.zero_();
  }
  return {dq.to(dt), dk.to(dt), dv.to(dt)};
}

}  // namespace

TORCH_LIBRARY_IMPL(janus, CPU, m) {
  m.impl("flash_attention_fwd", &flash_attention_fwd_cpu);
  m.impl("flash_attention_bwd", &flash_attention_bwd_cpu);
}
