// CPU flash attention backward with the structured mask generated on the fly.
//
// Per (batch, kv head): for each row block and key chunk, in transposed form so every
// brgemm has a plain row-major B operand (cpublas::brgemm cannot transpose B):
//   S^T = K Q^T, P^T = exp(scale S^T - lse), dV += P^T dO, dP^T = V dO^T,
//   dS^T = P^T (dP^T - delta), dK += scale dS^T Q, dQ^T += scale K^T dS^T.
// Score modifiers (ScoreMods): P^T = exp(s_mod - lse) from the modified scores, d_rel_bias
// gathers dS along the diagonals, and softcap turns dS into dS (1 - tanh^2) before dQ / dK.
// bf16 with AMX (even d) runs the same steps with bf16 VNNI brgemm operands and fp32
// accumulators (attention_bwd_native_bf16); bf16 / fp16 elsewhere widen each tile to fp32 and
// run the fp32 steps (attention_bwd_f32<T>).
#include "attention_bwd_common.h"

namespace janus_cpu {
namespace {

// The tile's rel_bias entries along its transposed rows: key row t (key c0 + t) needs
// bias[c0 + t - i0 - rr] for rows rr = 0.., a run that DEcreases along rr, so the tile's
// diagonals are copied reversed once, rev[u] = bias[top - u] with top = c0 + w - 1 - i0, and
// key row t reads the increasing run rev[w - 1 - t + rr]. d_rel_bias goes the same way back.
struct ReversedDiagonals {
  static constexpr int kMax = kChunkBwd + kBlockMBwd;   // w + rows - 1 entries
  alignas(64) float v[kMax];
  int top = 0, n = 0;
  void load(const float* bias, int c0, int w, int i0, int rows) {
    top = c0 + w - 1 - i0;
    n = w + rows - 1;
    for (int u = 0; u < n; ++u) v[u] = bias[top - u];
  }
  void zero(int c0, int w, int i0, int rows) {
    top = c0 + w - 1 - i0;
    n = w + rows - 1;
    std::fill_n(v, n, 0.f);
  }
  void add_to(float* dbias) const { for (int u = 0; u < n; ++u) dbias[top - u] += v[u]; }
};

// Elementwise step of one (row block, key chunk) tile, in transposed form (w x rows, ld rows):
// on entry pt = S^T and dpt = dP^T; on exit pt = P^T (dropped when dropout is on: it feeds dV)
// and dpt = dS^T = P^T (keep dP^T / (1-p) - delta) (unscaled; times 1 - tanh^2 with softcap).
// emit(t, prow, dsrow) is called after key row t is final, while it is still in cache.
template <class Emit>
void bwd_p_ds_tile(const janus::SampleMask& m, int i0, int i1, int c0, int w, float scale,
                   const BwdHeadMods& hm, const Dropout& drop, int bh, const BwdRowStats& st,
                   float* pt, float* dpt, Emit&& emit) {
  const int rows = i1 - i0 + 1;
  const bool full = m.tile_class(i0, i1, c0, c0 + w - 1) == janus::TILE_FULL;
  // with modifiers the scores are modified (scale folded in) before the exp
  const Vec vscale(hm.on ? 1.f : scale);
  ReversedDiagonals bias, dbias;
  alignas(64) float dtanh[kBlockMBwd];   // 1 - tanh^2 of the current key row (softcap)
  if (hm.bias) bias.load(hm.bias, c0, w, i0, rows);
  if (hm.dbias) dbias.zero(c0, w, i0, rows);
  for (int t = 0; t < w; ++t) {
    const int j = c0 + t;
    float* prow = pt + (int64_t)t * rows;
    float* dprow = dpt + (int64_t)t * rows;
    if (hm.on)
      modify_scores_row(prow, rows, scale, hm.softcap, hm.bias ? bias.v + (w - 1 - t) : nullptr,
                        dtanh);
    int64_t r = 0;
    for (; r < rows; r += Vec::size()) {   // partial load/store on the tail
      const int n = std::min<int>(Vec::size(), rows - r);
      Vec p = (Vec::loadu(prow + r, n) * vscale - Vec::loadu(st.lse.data() + r, n)).exp_u20();
      p.store(prow + r, n);
    }
    if (!full && !m.ranges_exact()) {
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
    if (hm.dbias) {   // d_rel_bias takes dS, the gradient of the final score
      float* acc = dbias.v + (w - 1 - t);
      for (int rr = 0; rr < rows; ++rr) acc[rr] += dprow[rr];
    }
    if (hm.softcap > 0.f)
      for (int rr = 0; rr < rows; ++rr) dprow[rr] *= dtanh[rr];
    emit(t, prow, dprow);
  }
  if (hm.dbias) dbias.add_to(hm.dbias);
}

// fp32 backward; bf16 / fp16 tensors (T) are widened to fp32 per item (K, V) and per row
// block (Q, dO), and the gradients rounded once when they are written.
template <typename T>
void attention_bwd_f32(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                        const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                        const MaskArgs& ma, float scale, const ScoreMods& mods,
                        const Dropout& drop, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv) {
  const auto [B, H, Lq, d, Hkv, group, Lk, qp, kp, vp, op, gp, lp, dqp, dkp, dvp,
              qs, ks, vs, os, gs, lss] = bwd_view<T>(dout, q, k, v, out, lse, dq, dk, dv);
  const int64_t Lkp = round_up(Lk, 16) + 16;

  std::vector<BwdItem> items = make_bwd_items(ma, B, Hkv);
  const int nthreads = at::get_num_threads();
  std::vector<BwdRowStats> stats(nthreads);

  run_dynamic(items, [&](const BwdItem& it) {
    const int b = it.b, hk = it.hk;
    const auto m = ma.sample(b);
    const BwdItemScratch<float> sc(stats, m, d, Lkp, Lk);
    auto [st, kt, qt, dot, dqt, pt, dpt, dkacc, dvacc, kv] = sc;
    const auto [kb, k_ld] = rows_f32(kp + b * ks[0] + hk * ks[1], Lk, d, ks[2], kKf);
    const auto [vb, v_ld] = rows_f32(vp + b * vs[0] + hk * vs[1], Lk, d, vs[2], kVf);
    // K^T [d][Lkp] for dQ^T += K^T dS^T (SIMD transposes: at small shapes scalar ones cost
    // as much as the GEMMs)
    janus_cpu::transpose32(Lk, d, kb, k_ld, kt, Lkp);
    const auto blocks = make_row_blocks(ma, b, Lq, kBlockMBwd, true);

    for (int h = hk * group; h < (hk + 1) * group; ++h) {
      const int bh = b * H + h;
      const BwdHeadMods hm = head_mods(mods, b, h, H, Lq);
      zero_uncovered_rows<T>(blocks, Lq, d, dqp + ((int64_t)b * H + h) * Lq * d, d, nullptr,
                             stream_outputs(dq));
      for (const auto& blk : blocks) {
        const int i0 = blk.i0, rows = blk.i1 - blk.i0 + 1;
        const T* oblk = op + b * os[0] + h * os[1] + (int64_t)i0 * os[2];
        const T* graw = gp + b * gs[0] + h * gs[1] + (int64_t)i0 * gs[2];
        bwd_row_stats<T>(m, i0, rows, d, graw, gs[2], oblk, os[2],
                         lp + b * lss[0] + h * lss[1] + (int64_t)i0 * lss[2], lss[2], st);
        const auto [qblk, q_ld] = rows_f32(qp + b * qs[0] + h * qs[1] + (int64_t)i0 * qs[2],
                                           rows, d, qs[2], kQf);
        const auto [gblk, g_ld] = rows_f32(graw, rows, d, gs[2], kGf);
        // Q^T, dO^T [d][rows]
        janus_cpu::transpose32(rows, d, qblk, q_ld, qt, rows);
        janus_cpu::transpose32(rows, d, gblk, g_ld, dot, rows);
        std::fill_n(dqt, (int64_t)d * rows, 0.f);
        int pre, lo, hi;
        span_ranges(m, ma.q_split, i0, blk.i1, &pre, &lo, &hi);
        for_each_key_chunk(pre, lo, hi, kChunkBwd, [&](int c0, int w) {
          // S^T = K_chunk Q^T  (w x rows)
          at::native::cpublas::brgemm(w, rows, d, k_ld, rows, rows, false, kb + c0 * k_ld,
                                      qt, pt);
          // dP^T = V_chunk dO^T
          at::native::cpublas::brgemm(w, rows, d, v_ld, rows, rows, false, vb + c0 * v_ld,
                                      dot, dpt);
          // dV += P^T dO ; dK += scale dS^T Q ; dQ^T += scale K^T dS^T
          // (dV uses the unscaled P^T, so dS^T is scaled row by row as it is produced)
          bwd_p_ds_tile(m, i0, blk.i1, c0, w, scale, hm, drop, bh, st, pt, dpt,
                        [&](int, float*, float* dsrow) {
                          for (int r = 0; r < rows; ++r) dsrow[r] *= scale;
                        });
          at::native::cpublas::brgemm(w, d, rows, rows, g_ld, d, true, pt, gblk,
                                      dvacc + (int64_t)c0 * d);
          at::native::cpublas::brgemm(w, d, rows, rows, q_ld, d, true, dpt, qblk,
                                      dkacc + (int64_t)c0 * d);
          at::native::cpublas::brgemm(d, rows, w, Lkp, rows, rows, true, kt + c0, dpt, dqt);
        });
        T* dqblk = dqp + (((int64_t)b * H + h) * Lq + i0) * d;  // dq contiguous
        if constexpr (std::is_same_v<T, float>) {
          janus_cpu::transpose32(d, rows, dqt, rows, dqblk, d);
        } else {
          float* dqf = scratch<float>(kDq, d * kBlockMBwd);
          janus_cpu::transpose32(d, rows, dqt, rows, dqf, d);
          narrow_row(dqf, dqblk, (int64_t)rows * d);
        }
      }
    }
    // dk, dv contiguous (allocated here)
    sc.write_dkdv(dkp + ((int64_t)b * Hkv + hk) * Lk * d, dvp + ((int64_t)b * Hkv + hk) * Lk * d,
                  Lk, d, stream_outputs(dk));
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
void attention_bwd_native_bf16(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                             const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                             const MaskArgs& ma, float scale, const ScoreMods& mods,
                             const Dropout& drop, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv) {
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
    const auto blocks = make_row_blocks(ma, b, Lq, kBlockMBwd, true);

    for (int h = hk * group; h < (hk + 1) * group; ++h) {
      const int bh = b * H + h;
      const BwdHeadMods hm = head_mods(mods, b, h, H, Lq);
      zero_uncovered_rows<T>(blocks, Lq, d, dqp + ((int64_t)b * H + h) * Lq * d, d, nullptr,
                             stream_outputs(dq));
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
        span_ranges(m, ma.q_split, i0, blk.i1, &pre, &lo, &hi);
        for_each_key_chunk(pre, lo, hi, kChunkBwd, [&](int c0, int w) {
          brgemm(w, rows, d, ks[2], rows, rows, false, kb + c0 * ks[2], qt, pt, true);
          brgemm(w, rows, d, vs[2], rows, rows, false, vb + c0 * vs[2], dot, dpt, true);
          bwd_p_ds_tile(m, i0, blk.i1, c0, w, scale, hm, drop, bh, st, pt, dpt,
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
                  Lk, d, stream_outputs(dk));
  }, /*release_amx=*/true);
}
}  // namespace

// d_rel_bias: each (b, h) is owned by one work item, which accumulates into its own row of a
// (B, H, rel_len) slab (B = 1: d_rel_bias itself); the rows are summed over b in a fixed order
// afterwards, so the result does not depend on the thread schedule.
void attention_bwd(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                   const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                   const MaskArgs& ma, float scale, const ScoreMods& mods, const Dropout& drop,
                   bool native_bf16, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv) {
  const int64_t B = q.size(0), H = q.size(1);
  ScoreMods per_bh = mods;
  at::Tensor slab;
  if (mods.d_rel_bias && B > 1) {
    slab = at::zeros({B, H, mods.rel_len}, q.options().dtype(at::kFloat));
    per_bh.d_rel_bias = slab.data_ptr<float>();
  }
  const bool native = native_bf16 && q.scalar_type() == at::kBFloat16;
  if (!native && attention_bwd_small_serves(k.size(2), q.size(3))) {
    attention_bwd_small(dout, q, k, v, out, lse, ma, scale, per_bh, drop, dq, dk, dv);
  } else switch (q.scalar_type()) {
    case at::kFloat:
      attention_bwd_f32<float>(dout, q, k, v, out, lse, ma, scale, per_bh, drop, dq, dk, dv);
      break;
    case at::kBFloat16:
      if (native_bf16)
        attention_bwd_native_bf16(dout, q, k, v, out, lse, ma, scale, per_bh, drop, dq, dk, dv);
      else
        attention_bwd_f32<BFloat16>(dout, q, k, v, out, lse, ma, scale, per_bh, drop, dq, dk, dv);
      break;
    case at::kHalf:
      attention_bwd_f32<Half>(dout, q, k, v, out, lse, ma, scale, per_bh, drop, dq, dk, dv);
      break;
    default: TORCH_CHECK(false, "attention (cpu): unsupported dtype ", q.scalar_type());
  }
  if (slab.defined()) {
    const float* src = slab.data_ptr<float>();
    const int64_t n = H * mods.rel_len;
    at::parallel_for(0, n, 2048, [&](int64_t a, int64_t e) {
      for (int64_t x = a; x < e; ++x) {
        float sum = 0.f;
        for (int64_t b = 0; b < B; ++b) sum += src[b * n + x];
        mods.d_rel_bias[x] += sum;
      }
    });
  }
}

}  // namespace janus_cpu
