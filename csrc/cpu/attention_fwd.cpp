// CPU flash attention forward with the structured mask generated on the fly.
//
// Per (batch, head, block of rows of one stream, or of both streams of a short sample):
//   keys needed by the block = [0, pre) U [lo(first row), hi(last row))   (janus/mask.h)
//   for each chunk of those keys (dead key tiles are never touched):
//     S = Q_blk K_chunk^T      fp32 tiles: the inlined GEMM of small_gemm.h, reading the rows
//                              through pointers, so a block holding both streams skips the
//                              padding rows between them (IWSLT-sized batches: ~18% of its
//                              rows); native bf16: oneDNN brgemm with VNNI-packed B
//     score modifiers (softcap, rel_bias; only when on): S = modified scores, scale folded in
//     mask: only tiles that are not FULL are masked, by per-row interval fills (no predicate
//           is evaluated per element except for the permutation kind)
//     online softmax (at::vec), O_acc = O_acc * exp(m_old - m_new) + P V_chunk
//   out = O_acc / l, lse = m + log(l); rows that see no key -> out 0, lse -inf.
// Storage type T (the tensors) and compute type C (the GEMM operands) differ only on the
// widening path: bf16 / fp16 tensors computed with fp32 tiles (T != C = float).
#include "attention_common.h"
#include "small_gemm.h"
#include "small_softmax_tile.h"

namespace janus_cpu {
namespace {


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
        // masked entries and the rounded-up columns [w, wr) become -inf, whole vectors at a
        // time (stored back only where a lane changed)
        const RowVisible vis(m, i0 + g0 + r, c0, w, full);
        auto load = [&](int t) {
          const Vec x = Vec::loadu(srow + t);
          const uint32_t bits = vis.bits(t);
          if (bits == RowVisible::kAll) return x;
          const Vec y = masked(x, bits, neg_inf);
          y.store(srow + t);
          return y;
        };
        // four independent max chains: one chain is bound by vmaxps latency, not loads
        Vec v1(kNegInf), v2(kNegInf), v3(kNegInf);
        int t = 0;
        for (; t + 4 * kW <= wr; t += 4 * kW) {
          vm = fast_max(vm, load(t));
          v1 = fast_max(v1, load(t + kW));
          v2 = fast_max(v2, load(t + 2 * kW));
          v3 = fast_max(v3, load(t + 3 * kW));
        }
        for (; t < wr; t += kW) vm = fast_max(vm, load(t));
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

// One row block through the register softmax tile (small_softmax_tile.h): the rows of rr
// over keys [0, w) (one chunk), leaving P V (unnormalized) in acc and the final row max and
// sum in mrow / lrow, as the chunk loop below would. qblk: the block's Q rows from row i0
// (row stride q_ld); kt: K^T [d][Lkp]; v: V rows (stride v_ld); S: P scratch.
void softmax_tile_block(const janus::SampleMask& m, const RowRuns& rr, int i0, const float* qblk,
                        int64_t q_ld, const float* kt, int64_t Lkp, const float* v,
                        int64_t v_ld, int w, int d, float scale, float* S, float* acc,
                        float* mrow, float* lrow) {
  const int rows = rr.n();
  const int64_t wr = round_up(w, Vec::size());
  const float* qrow[kBlockM];
  const float* ktrow[kMaxHeadDim];
  float* srow[kBlockM];
  const float* prow[kBlockM];
  float* arow[kBlockM];
  const float* vrow[kSoftmaxTileKeys];
  RowVisible vis[kBlockM];
  for (int r = 0; r < rows; ++r) {
    qrow[r] = qblk + (rr.row(r) - i0) * q_ld;
    prow[r] = srow[r] = S + r * wr;
    arow[r] = acc + (int64_t)r * d;
  }
  for (int x = 0, at = 0; x < 2; at += rr.count[x], ++x) {   // each run's rows
    const int r0 = rr.start[x], n = rr.count[x];
    if (n == 0) continue;
    const bool full = m.tile_class(r0, r0 + n - 1, 0, w - 1) == janus::TILE_FULL;
    for (int r = 0; r < n; ++r) vis[at + r] = RowVisible(m, r0 + r, 0, w, full);
  }
  for (int c = 0; c < d; ++c) ktrow[c] = kt + c * Lkp;
  for (int t = 0; t < w; ++t) vrow[t] = v + t * v_ld;
  qk_softmax(rows, w, d, qrow, ktrow, srow, vis, scale, mrow, lrow);
  small_gemm<AMode::kRows>(rows, d, w, prow, vrow, arow, false);
}

// =========================================================================== forward
// K^T of one (b, kv head), packed per work item into thread-local scratch, real keys only:
// fp32 [d][Lkp]; bf16 VNNI [d/2][Lkp][2], and V for bf16 as VNNI [Lkp/2][d][2]. Columns
// past the sample's kv_len are zero so rounded-up chunk widths read defined memory. On the
// widening path (T != C) V is also packed, as fp32 rows [kv_len][d].
template <typename C>
struct PackedHead {
  C* kt = nullptr;   // thread scratch
  const C* v = nullptr;
  int64_t v_ld = 0;  // row stride of v
  int64_t Lkp = 0;
  int b = -1, hk = -1;
};

template <typename T, typename C>
void pack_head(const T* kb, const T* vb, int64_t ks_l, int64_t vs_l, int kv_len, int d,
               PackedHead<C>& out) {
  constexpr bool kVnni = std::is_same_v<C, BFloat16>;
  constexpr int kPad = kVnni ? 32 : 16;  // chunk widths are rounded up to this
  out.Lkp = round_up(kv_len, kPad) + kPad;
  C* dst = out.kt = scratch<C>(kKt, d * out.Lkp);
  if constexpr (kVnni) {
    static_assert(std::is_same_v<T, C>, "native bf16 tiles need bf16 tensors");
    // K^T VNNI [d/2][Lkp][2] is a 32-bit transpose of K viewed as (kv_len, d/2) pairs.
    vnni_transpose(kb, kv_len, d, ks_l, dst, out.Lkp);
    for (int64_t c2 = 0; c2 < d / 2; ++c2)
      std::fill(dst + (c2 * out.Lkp + kv_len) * 2, dst + (c2 + 1) * out.Lkp * 2, C(0));
    // V VNNI [Lkp/2][d][2]: rows 2t and 2t+1 interleaved (zero past kv_len)
    C* vv = scratch<C>(kV, out.Lkp * d);
    vnni_interleave_rows(vb, kv_len, d, vs_l, out.Lkp / 2, vv);
    out.v = vv;
    out.v_ld = d;
  } else {
    const auto [kf, kf_ld] = rows_f32(kb, kv_len, d, ks_l, kKf);
    janus_cpu::transpose32(kv_len, d, kf, kf_ld, dst, out.Lkp);
    for (int64_t c = 0; c < d; ++c)
      std::fill(dst + c * out.Lkp + kv_len, dst + (c + 1) * out.Lkp, 0.f);
    const auto [vf, vf_ld] = rows_f32(vb, kv_len, d, vs_l, kVf);   // no copy for fp32
    out.v = vf;
    out.v_ld = vf_ld;
  }
}

// Forward work item: row blocks [blk_begin, blk_end) of sample b's block list, head h.
struct FwdItem { int b, h, blk_begin, blk_end; int64_t cost; };

template <typename T, typename C>
void attention_fwd_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                        const MaskArgs& ma, float scale, const ScoreMods& mods,
                        const Dropout& drop, at::Tensor& out, at::Tensor& lse) {
  constexpr bool kBf16 = std::is_same_v<C, BFloat16>;   // native bf16 tiles
  const auto [B, H, Lq, d, Hkv, group, Lk, qp, kp, vp, op, lp] = fwd_view<T>(q, k, v, out, lse);
  const auto qs = q.strides(), ks = k.strides(), vs = v.strides();
  const int64_t os_b = out.stride(0), os_h = out.stride(1), os_l = out.stride(2);
  const int64_t ls_b = lse.stride(0), ls_h = lse.stride(1);
  const int width_round = kBf16 ? 32 : 16;
  const int nthreads = at::get_num_threads();
  const bool nt = stream_outputs(out);
  // widest block the register softmax tile takes; JANUS_CPU_SMALL_TILES_MAX_KEYS=0 turns it
  // off with the small-tile backward (the tests run both paths on the same cases)
  const int tile_keys = std::min(kSoftmaxTileKeys, small_tiles_max_keys());

  // Row blocks per sample; each (b, h) is one item (K packed once), split into a few items
  // only when there are too few heads to keep every thread busy (then the streams stay in
  // separate blocks, so that there is something to split).
  const int splits = std::max<int64_t>(1, (4 * nthreads + (int64_t)B * H - 1) / ((int64_t)B * H));
  std::vector<std::vector<RowBlock>> blocks(B);
  for (int b = 0; b < B; ++b) blocks[b] = make_row_blocks(ma, b, Lq, kBlockM, splits == 1);
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
  std::vector<PackedHead<C>> heads(nthreads);

  run_dynamic(items, [&](const FwdItem& item) {
    const int tid = at::get_thread_num();
    const int b = item.b, h = item.h, hk = h / group;
    PackedHead<C>& ph = heads[tid];
    const auto m = ma.sample(b);
    if (ph.b != b || ph.hk != hk) {
      pack_head<T, C>(kp + b * ks[0] + hk * ks[1], vp + b * vs[0] + hk * vs[1], ks[2], vs[2],
                   std::min(m.kv_len(), Lk), d, ph);
      ph.b = b;
      ph.hk = hk;
    }
    const int64_t Lkp = ph.Lkp;
    const C* kt = ph.kt;
    // rel_bias of head h shifted so that bias_h[j - i] is the entry of (i, j)
    const float* bias_h = mods.rel_bias ? mods.rel_bias + h * mods.rel_len + (Lq - 1) : nullptr;
    if (item.blk_begin == 0)
      zero_uncovered_rows<T>(blocks[b], Lq, d, op + b * os_b + h * os_h, os_l,
                             lp + b * ls_b + h * ls_h, nt);
    for (int x = item.blk_begin; x < item.blk_end; ++x) {
      const RowBlock& it = blocks[b][x];
      float* S = scratch<float>(kS, (int64_t)kBlockM * kChunkFwd);
      float* acc = scratch<float>(kAcc, (int64_t)kBlockM * d);
      float* mrow = scratch<float>(kRowMax, kBlockM);
      float* lrow = scratch<float>(kRowSum, kBlockM);
      C* P = kBf16 ? scratch<C>(kP, (int64_t)kBlockM * kChunkFwd) : nullptr;
      const int span = it.i1 - it.i0 + 1;
      // The block's rows as runs: a merged block's content and query rows, without the
      // padding rows between them (fp32 tiles read rows through pointers, small_gemm.h);
      // native bf16 brgemm needs evenly strided rows, so there the gap rows are computed as
      // rows that see no key.
      const RowRuns rr = kBf16 ? RowRuns{{it.i0, 0}, {span, 0}} : block_runs(it, m, ma.q_split);
      const int rows = rr.n();
      // Q rows: the tensor itself, or widened to fp32 (row stride q_ld)
      const auto [qblk, q_ld] = [&]() -> std::pair<const C*, int64_t> {
        const T* src = qp + b * qs[0] + h * qs[1] + (int64_t)it.i0 * qs[2];
        if constexpr (std::is_same_v<T, C>) return {src, qs[2]};
        else return rows_f32(src, span, d, qs[2], kQf);
      }();
      std::fill_n(mrow, rows, kNegInf);
      std::fill_n(lrow, rows, 0.f);
      int pre, lo, hi;
      span_ranges(m, ma.q_split, it.i0, it.i1, &pre, &lo, &hi);
      if (kBf16 && hi > lo) lo &= ~1;  // VNNI pairs keys (2t, 2t+1): chunks start at even keys

      // A block whose keys fit one register tile (small items): scores and softmax in one
      // pass (small_softmax_tile.h), then acc = P V; merging the gap between the prefix and
      // the window into that one chunk costs no extra vector lanes (merge_key_gap).
      int one_w = 0;   // that chunk's width [0, one_w) (for_each_key_chunk's single chunk)
      if constexpr (!kBf16) {
        const int keys = (hi <= lo) ? pre : (lo <= pre) ? std::max(pre, hi)
                         : merge_key_gap(pre, lo, hi, kSoftmaxTileKeys) ? hi : 0;
        if (!mods.on() && !drop.on() && keys <= tile_keys) one_w = keys;
        if (one_w > 0)
          softmax_tile_block(m, rr, it.i0, qblk, q_ld, kt, Lkp, ph.v, ph.v_ld, one_w, d, scale, S,
                             acc, mrow, lrow);
      }

      // acc is not zeroed: the first chunk's P V writes it (rows seeing none of that chunk's
      // keys get P = 0 rows); later chunks accumulate. Rows with l = 0 never read it.
      bool first = true;
      if (one_w == 0) for_each_key_chunk(pre, lo, hi, kChunkFwd, [&](int c0, int w) {
        const int wr = std::min<int>(round_up(w, width_round), kChunkFwd);
        // S = Q K^T over the rounded-up width (K^T is zero past kv_len); columns [w, wr) are
        // masked below
        if constexpr (kBf16) {
          at::native::cpublas::brgemm(rows, wr, d, q_ld, Lkp, wr, false, qblk, kt + c0 * 2, S,
                                      true);
        } else {
          const float* qrow[kBlockM];
          const float* ktrow[kMaxHeadDim];
          float* srow[kBlockM];
          for (int r = 0; r < rows; ++r) {
            qrow[r] = qblk + (rr.row(r) - it.i0) * q_ld;
            srow[r] = S + (int64_t)r * wr;
          }
          for (int c = 0; c < d; ++c) ktrow[c] = kt + c * Lkp + c0;
          small_gemm<AMode::kRows>(rows, wr, d, qrow, ktrow, srow, false);
        }
        // with modifiers S becomes the final scores (scale applied; FULL tiles too) before the
        // mask and the softmax, which then run with scale 1
        if (mods.on()) {
          for (int r = 0; r < rows; ++r)
            modify_scores_row(S + (int64_t)r * wr, w, scale, mods.softcap,
                              bias_h ? bias_h + c0 - rr.row(r) : nullptr);
        }
        for (int x2 = 0, at = 0; x2 < 2; at += rr.count[x2], ++x2) {   // each run's rows
          const int i0 = rr.start[x2], n = rr.count[x2];
          if (n == 0) continue;
          const bool full = m.tile_class(i0, i0 + n - 1, c0, c0 + w - 1) == janus::TILE_FULL;
          softmax_chunk<C>(m, i0, n, c0, w, wr, full, mods.on() ? 1.f : scale, drop, b * H + h,
                           S + (int64_t)at * wr, kBf16 ? P + (int64_t)at * wr : nullptr,
                           mrow + at, lrow + at, acc + (int64_t)at * d, d);
        }
        // O_acc += P V_chunk
        if constexpr (kBf16) {
          const C* vchunk = ph.v + (int64_t)c0 * d;
          at::native::cpublas::brgemm(rows, d, wr, wr, d, d, !first, P, vchunk, acc, true);
        } else {
          // only the w real keys: V has no padded rows to read beyond Lk
          const float* prow[kBlockM];
          const float* vrow[kChunkFwd];
          float* arow[kBlockM];
          for (int r = 0; r < rows; ++r) {
            prow[r] = S + (int64_t)r * wr;
            arow[r] = acc + (int64_t)r * d;
          }
          for (int t = 0; t < w; ++t) vrow[t] = ph.v + (int64_t)(c0 + t) * ph.v_ld;
          small_gemm<AMode::kRows>(rows, d, w, prow, vrow, arow, !first);
        }
        first = false;
      });

      T* oh = op + b * os_b + h * os_h;
      float* lh = lp + b * ls_b + h * ls_h;
      for (int r = 0; r < rows; ++r) {
        const int i = rr.row(r);
        T* orow = oh + (int64_t)i * os_l;
        const float l = lrow[r];
        if (l > 0.f) {
          const float inv = 1.f / l;
          float* arow = acc + (int64_t)r * d;
          at::vec::map([inv](Vec x) { return x * Vec(inv); }, arow, arow, d);
          store_row(arow, orow, d, nt);
          lh[i] = mrow[r] + std::log(l);
        } else {  // a valid row that sees no key
          store_row(nullptr, orow, d, nt);
          lh[i] = kNegInf;
        }
      }
      // the padding rows a merged block skipped: zero output, lse -inf
      for (int i = rr.start[0] + rr.count[0]; rr.count[1] > 0 && i < rr.start[1]; ++i) {
        store_row(nullptr, oh + (int64_t)i * os_l, d, nt);
        lh[i] = kNegInf;
      }
    }  // row blocks of the item
    _mm_sfence();   // the non-temporal stores of this item
    prefetch_queue().clear();
  }, [&](const FwdItem& item) {   // queue the next item's rows: K and V when not packed, Q
    auto& pq = prefetch_queue();
    pq.clear();
    const auto m = ma.sample(item.b);
    const int hk = item.h / group, kv = std::min(m.kv_len(), Lk);
    const int64_t rb = (int64_t)d * sizeof(T);
    const PackedHead<C>& cur = heads[at::get_thread_num()];
    if (cur.b != item.b || cur.hk != hk) {
      pq.add(kp + item.b * ks[0] + hk * ks[1], kv * rb);
      pq.add(vp + item.b * vs[0] + hk * vs[1], kv * rb);
    }
    for (int x = item.blk_begin; x < item.blk_end; ++x) {
      const RowBlock& blk = blocks[item.b][x];
      pq.add(qp + item.b * qs[0] + item.h * qs[1] + (int64_t)blk.i0 * qs[2],
             (int64_t)(blk.i1 - blk.i0 + 1) * rb);
    }
  }, /*release_amx=*/kBf16);
  (void)Lk;
  (void)vp;
}

}  // namespace

void attention_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                   const MaskArgs& ma, float scale, const ScoreMods& mods, const Dropout& drop,
                   bool native_bf16, at::Tensor& out, at::Tensor& lse) {
  if (attention_fwd_rows_serves(q.size(2)))
    return attention_fwd_rows(q, k, v, ma, scale, mods, drop, out, lse);
  switch (q.scalar_type()) {
    case at::kFloat:
      return attention_fwd_impl<float, float>(q, k, v, ma, scale, mods, drop, out, lse);
    case at::kBFloat16:
      if (native_bf16)
        return attention_fwd_impl<BFloat16, BFloat16>(q, k, v, ma, scale, mods, drop, out, lse);
      return attention_fwd_impl<BFloat16, float>(q, k, v, ma, scale, mods, drop, out, lse);
    case at::kHalf:
      return attention_fwd_impl<Half, float>(q, k, v, ma, scale, mods, drop, out, lse);
    default: TORCH_CHECK(false, "attention (cpu): unsupported dtype ", q.scalar_type());
  }
}

}  // namespace janus_cpu
