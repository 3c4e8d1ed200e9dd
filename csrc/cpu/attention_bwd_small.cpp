// CPU flash attention backward for small items: a sample's keys fit one chunk (Lk <= 128),
// as at IWSLT-sized batches (~48 rows x ~36 keys per (batch, head)).
//
// Same math as attention_bwd.cpp, in row-major tiles with the inlined small_gemm.h kernel:
//   S = Q K^T, dP = dO V^T                 (K^T, V^T packed once per (b, kv head))
//   P = exp(scale S - lse), dS = P (dP - delta)          (row by row, masked from each row's
//                                                         key ranges, as the forward does)
//   dV += P^T dO, dK += scale dS^T Q       (A read transposed: no transpose of P or dS)
//   dQ  = scale dS K                       (in scratch, then streamed to dq)
// There the brgemm driver transposes Q, dO and dQ of every row block and pays a kernel-cache
// lookup per GEMM, which at these sizes cost as much as the FLOPs. A block may hold the
// content and the query rows of a sample together (make_row_blocks' merged block): the row
// pointers skip the padding rows between them, so no FLOP is spent on them.
// bf16 / fp16 tensors are widened row by row into fp32 scratch, as in attention_bwd_f32.
#include "attention_bwd_common.h"
#include "small_gemm.h"

namespace janus_cpu {
namespace {


// Whether every row of the runs sees every key of [c0, c0 + w) (then no masking is needed).
bool runs_full(const janus::SampleMask& m, const RowRuns& rr, int c0, int w) {
  for (int x = 0; x < 2; ++x) {
    if (rr.count[x] == 0) continue;
    const int i0 = rr.start[x], i1 = i0 + rr.count[x] - 1;
    if (m.tile_class(i0, i1, c0, c0 + w - 1) != janus::TILE_FULL) return false;
  }
  return true;
}

// The P / dS step of one row-major tile (rows x w, row stride w). On entry s = S (raw scores)
// and dp = dP; on exit s = P (dropped when dropout is on: it feeds dV) and dp = scale dS with
// dS = P (keep dP / (1 - p) - delta), times 1 - tanh^2 with softcap. d_rel_bias takes dS (the
// gradient of the final score) before the softcap factor, as in bwd_p_ds_tile.
void p_ds_rows(const janus::SampleMask& m, const RowRuns& rr, int c0, int w, bool full,
               float scale, const BwdHeadMods& hm, const Dropout& drop, int bh,
               const BwdRowStats& st, float* s, float* dp, float* dtanh) {
  constexpr int kW = Vec::size();
  const Vec vscale(hm.on ? 1.f : scale);   // with modifiers the scale is already folded in
  for (int r = 0; r < rr.n(); ++r) {
    const int i = rr.row(r);
    float* srow = s + (int64_t)r * w;
    float* drow = dp + (int64_t)r * w;
    float* grow = hm.softcap > 0.f ? dtanh + (int64_t)r * w : nullptr;
    if (hm.on)
      modify_scores_row(srow, w, scale, hm.softcap, hm.bias ? hm.bias + c0 - i : nullptr, grow);
    // the mask is applied in registers as the scores are read (RowVisible)
    const RowVisible vis(m, i, c0, w, full);
    const Vec lse(st.lse[r]), delta(st.delta[r]), vds(scale), neg_inf(kNegInf);
    auto scores = [&](int t, int n) {
      const Vec x = Vec::loadu(srow + t, n);
      return full ? x : masked(x, vis.bits(t), neg_inf);
    };
    if (!drop.on()) {   // P, dS, d_rel_bias and the scaled dS in one pass over the row
      for (int t = 0; t < w; t += kW) {
        const int n = std::min(kW, w - t);
        const Vec p = (scores(t, n) * vscale - lse).exp_u20();
        p.store(srow + t, n);
        Vec ds = p * (Vec::loadu(drow + t, n) - delta);
        if (hm.dbias) {   // dbias[j - i] += dS(i, j): a contiguous run along the row
          float* db = hm.dbias + c0 - i + t;
          (Vec::loadu(db, n) + ds).store(db, n);
        }
        if (grow) ds = ds * Vec::loadu(grow + t, n);
        (ds * vds).store(drow + t, n);
      }
      continue;
    }
    for (int t = 0; t < w; t += kW) {   // dropout: P first, then element by element
      const int n = std::min(kW, w - t);
      (scores(t, n) * vscale - lse).exp_u20().store(srow + t, n);
    }
    const float dl = st.delta[r];
    for (int t = 0; t < w; ++t) {
      const bool keep = janus::dropout_keep(drop.seed, drop.threshold, bh, i, c0 + t);
      const float ks = keep ? drop.inv_keep : 0.f;
      drow[t] = srow[t] * (drow[t] * ks - dl);
      srow[t] *= ks;
    }
    if (hm.dbias) {
      float* db = hm.dbias + c0 - i;
      for (int t = 0; t < w; t += kW) {
        const int n = std::min(kW, w - t);
        (Vec::loadu(db + t, n) + Vec::loadu(drow + t, n)).store(db + t, n);
      }
    }
    for (int t = 0; t < w; t += kW) {
      const int n = std::min(kW, w - t);
      Vec ds = Vec::loadu(drow + t, n) * vds;
      if (grow) ds = ds * Vec::loadu(grow + t, n);
      ds.store(drow + t, n);
    }
  }
}

// Row pointers of rows [start, start + n) of a (rows, d) matrix of T at `base` (row stride
// ld), as fp32: the tensor's own rows for fp32, else rows widened into buf + at * d.
template <typename T>
void f32_rows(const T* base, int64_t ld, int start, int n, int d, float* buf, int at,
              const float** out) {
  for (int r = 0; r < n; ++r) {
    const T* src = base + (int64_t)(start + r) * ld;
    if constexpr (std::is_same_v<T, float>) {
      out[at + r] = src;
    } else {
      float* dst = buf + (int64_t)(at + r) * d;
      widen_row(src, dst, d);
      out[at + r] = dst;
    }
  }
}

template <typename T>
void attention_bwd_small_impl(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                              const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                              const MaskArgs& ma, float scale, const ScoreMods& mods,
                              const Dropout& drop, at::Tensor& dq, at::Tensor& dk,
                              at::Tensor& dv) {
  const auto [B, H, Lq, d, Hkv, group, Lk, qp, kp, vp, op, gp, lp, dqp, dkp, dvp,
              qs, ks, vs, os, gs, lss] = bwd_view<T>(dout, q, k, v, out, lse, dq, dk, dv);
  TORCH_INTERNAL_ASSERT(Lk <= kChunkBwd && d <= kMaxHeadDim, "small backward: Lk ", Lk, ", d ", d);
  const int64_t Lkp = round_up(std::max(Lk, 1), 16);   // row stride of K^T and V^T
  std::vector<BwdItem> items = make_bwd_items(ma, B, Hkv);
  std::vector<std::vector<RowBlock>> sample_blocks(B);   // once per sample, not per item
  for (int b = 0; b < B; ++b) sample_blocks[b] = make_row_blocks(ma, b, Lq, kBlockMBwd, true);
  std::vector<BwdRowStats> stats(at::get_num_threads());
  const bool nt = stream_outputs(dq);

  run_dynamic(items, [&](const BwdItem& it) {
    const int b = it.b, hk = it.hk;
    const auto m = ma.sample(b);
    const BwdItemScratch<float> sc(stats, m, d, Lkp, Lk);   // K^T, tiles, dK / dV (zeroed)
    BwdRowStats& st = sc.st;
    const int kv = sc.kv;
    const auto [kb, k_ld] = rows_f32(kp + b * ks[0] + hk * ks[1], kv, d, ks[2], kKf);
    const auto [vb, v_ld] = rows_f32(vp + b * vs[0] + hk * vs[1], kv, d, vs[2], kVf);
    float* vt = scratch<float>(kVt, d * Lkp);
    janus_cpu::transpose32(kv, d, kb, k_ld, sc.kt, Lkp);
    janus_cpu::transpose32(kv, d, vb, v_ld, vt, Lkp);
    float* qbuf = std::is_same_v<T, float> ? nullptr : scratch<float>(kQf, kBlockMBwd * d);
    float* gbuf = std::is_same_v<T, float> ? nullptr : scratch<float>(kGf, kBlockMBwd * d);
    float* dqacc = scratch<float>(kDq, kBlockMBwd * d);
    float* dtanh = scratch<float>(kDtanh, kBlockMBwd * kChunkBwd);
    const std::vector<RowBlock>& blocks = sample_blocks[b];

    const float* qrow[kBlockMBwd];
    const float* grow[kBlockMBwd];
    float* dqrow[kBlockMBwd];
    float* srow[kBlockMBwd];
    float* dprow[kBlockMBwd];
    const float* ktrow[kMaxHeadDim];
    const float* vtrow[kMaxHeadDim];
    const float* krow[kChunkBwd];
    float* dkrow[kChunkBwd];
    float* dvrow[kChunkBwd];

    for (int h = hk * group; h < (hk + 1) * group; ++h) {
      const int bh = b * H + h;
      const BwdHeadMods hm = head_mods(mods, b, h, H, Lq);
      T* dqh = dqp + (int64_t)bh * Lq * d;   // dq contiguous
      zero_uncovered_rows<T>(blocks, Lq, d, dqh, d, nullptr, nt);
      for (const auto& blk : blocks) {
        const RowRuns rr = block_runs(blk, m, ma.q_split);
        const int rows = rr.n();
        for (int x = 0, at = 0; x < 2; at += rr.count[x], ++x) {
          const int i0 = rr.start[x], n = rr.count[x];
          if (n == 0) continue;
          const T* gb = gp + b * gs[0] + h * gs[1];
          bwd_row_stats<T>(m, i0, n, d, gb + (int64_t)i0 * gs[2], gs[2],
                           op + b * os[0] + h * os[1] + (int64_t)i0 * os[2], os[2],
                           lp + b * lss[0] + h * lss[1] + (int64_t)i0 * lss[2], lss[2], st, at);
          f32_rows<T>(qp + b * qs[0] + h * qs[1], qs[2], i0, n, d, qbuf, at, qrow);
          f32_rows<T>(gb, gs[2], i0, n, d, gbuf, at, grow);
          for (int r = 0; r < n; ++r) dqrow[at + r] = dqacc + (int64_t)(at + r) * d;
        }
        prefetch_rows(qrow, rows, d);   // dO was read by the row statistics; Q is cold
        // the padding rows a merged block skips: zero gradient
        if (rr.count[1] > 0)
          std::fill(dqh + (int64_t)(rr.start[0] + rr.count[0]) * d,
                    dqh + (int64_t)rr.start[1] * d, T(0));
        int pre, lo, hi;
        span_ranges(m, ma.q_split, blk.i0, blk.i1, &pre, &lo, &hi);
        bool first = true;
        for_each_key_chunk(pre, lo, hi, kChunkBwd, [&](int c0, int w) {
          for (int r = 0; r < rows; ++r) {
            srow[r] = sc.pt + (int64_t)r * w;
            dprow[r] = sc.dpt + (int64_t)r * w;
          }
          for (int c = 0; c < d; ++c) {
            ktrow[c] = sc.kt + c * Lkp + c0;
            vtrow[c] = vt + c * Lkp + c0;
          }
          for (int t = 0; t < w; ++t) {
            krow[t] = kb + (int64_t)(c0 + t) * k_ld;
            dkrow[t] = sc.dkacc + (int64_t)(c0 + t) * d;
            dvrow[t] = sc.dvacc + (int64_t)(c0 + t) * d;
          }
          small_gemm<AMode::kRows>(rows, w, d, qrow, ktrow, srow, false);    // S
          small_gemm<AMode::kRows>(rows, w, d, grow, vtrow, dprow, false);   // dP
          p_ds_rows(m, rr, c0, w, runs_full(m, rr, c0, w), scale, hm, drop, bh, st, sc.pt,
                    sc.dpt, dtanh);
          small_gemm<AMode::kTransposed>(w, d, rows, srow, grow, dvrow, true);    // dV += P^T dO
          small_gemm<AMode::kTransposed>(w, d, rows, dprow, qrow, dkrow, true);   // dK += dS^T Q
          small_gemm<AMode::kRows>(rows, d, w, dprow, krow, dqrow, !first);       // dQ (+)= dS K
          first = false;
        });
        if (first)   // no key chunk (cannot happen for a block make_row_blocks kept)
          for (int r = 0; r < rows; ++r) std::fill_n(dqrow[r], d, 0.f);
        // dQ rows leave the cache-resident scratch once: streamed for fp32 (no read of the
        // output lines when large, see store_floats), rounded for bf16 / fp16
        for (int x = 0, at = 0; x < 2; at += rr.count[x], ++x)
          for (int r = 0; r < rr.count[x]; ++r) {
            store_row(dqacc + (int64_t)(at + r) * d, dqh + (int64_t)(rr.start[x] + r) * d, d, nt);
          }
      }
    }
    sc.write_dkdv(dkp + ((int64_t)b * Hkv + hk) * Lk * d, dvp + ((int64_t)b * Hkv + hk) * Lk * d,
                  Lk, d, stream_outputs(dk));
    prefetch_queue().clear();
  }, [&](const BwdItem& it) {   // queue the next item's rows: dO, O, K, V, Q (first use order)
    auto& pq = prefetch_queue();
    pq.clear();
    const auto m = ma.sample(it.b);
    const int kv = std::min(m.kv_len(), Lk);
    const int64_t rb = (int64_t)d * sizeof(T);
    const int runs[2][2] = {{0, std::min(m.rows(0), ma.q_split)},
                            {ma.q_split, std::min(m.rows(1), Lq - ma.q_split)}};
    for (int h = it.hk * group; h < (it.hk + 1) * group; ++h)
      for (const auto& run : runs) {
        if (run[1] <= 0) continue;
        pq.add(gp + it.b * gs[0] + h * gs[1] + (int64_t)run[0] * gs[2], run[1] * rb);
        pq.add(op + it.b * os[0] + h * os[1] + (int64_t)run[0] * os[2], run[1] * rb);
      }
    pq.add(kp + it.b * ks[0] + it.hk * ks[1], kv * rb);
    pq.add(vp + it.b * vs[0] + it.hk * vs[1], kv * rb);
    for (int h = it.hk * group; h < (it.hk + 1) * group; ++h)
      for (const auto& run : runs)
        if (run[1] > 0) pq.add(qp + it.b * qs[0] + h * qs[1] + (int64_t)run[0] * qs[2], run[1] * rb);
  }, /*release_amx=*/false);
}

}  // namespace

bool attention_bwd_small_serves(int64_t Lk, int64_t d) {
  return Lk <= small_tiles_max_keys() && d <= kMaxHeadDim;
}

void attention_bwd_small(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                         const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                         const MaskArgs& ma, float scale, const ScoreMods& mods,
                         const Dropout& drop, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv) {
  switch (q.scalar_type()) {
    case at::kFloat:
      return attention_bwd_small_impl<float>(dout, q, k, v, out, lse, ma, scale, mods, drop, dq,
                                             dk, dv);
    case at::kBFloat16:
      return attention_bwd_small_impl<BFloat16>(dout, q, k, v, out, lse, ma, scale, mods, drop,
                                                dq, dk, dv);
    case at::kHalf:
      return attention_bwd_small_impl<Half>(dout, q, k, v, out, lse, ma, scale, mods, drop, dq,
                                            dk, dv);
    default: TORCH_CHECK(false, "attention (cpu): unsupported dtype ", q.scalar_type());
  }
}

}  // namespace janus_cpu
