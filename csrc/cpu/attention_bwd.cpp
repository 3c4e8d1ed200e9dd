// CPU flash attention backward with the structured mask generated on the fly.
//
// Per (batch, kv head): for each row block and key chunk, in transposed form so every
// brgemm has a plain row-major B operand (cpublas::brgemm cannot transpose B):
//   S^T = K Q^T, P^T = exp(scale S^T - lse), dV += P^T dO, dP^T = V dO^T,
//   dS^T = P^T (dP^T - delta), dK += scale dS^T Q, dQ^T += scale K^T dS^T.
// bf16 with AMX (even d) runs the same steps with bf16 VNNI brgemm operands and fp32
// accumulators (attention_bwd_native_bf16); bf16 / fp16 elsewhere widen each tile to fp32 and
// run the fp32 steps (attention_bwd_f32<T>).
#include "attention_common.h"

namespace janus_cpu {
namespace {

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
  template <typename O>   // the gradients' dtype
  void write_dkdv(O* dkb, O* dvb, int Lk, int d) const {
    narrow_row(dkacc, dkb, (int64_t)kv * d);
    narrow_row(dvacc, dvb, (int64_t)kv * d);
    std::fill_n(dkb + (int64_t)kv * d, (int64_t)(Lk - kv) * d, O(0));
    std::fill_n(dvb + (int64_t)kv * d, (int64_t)(Lk - kv) * d, O(0));
  }
};

// fp32 backward; bf16 / fp16 tensors (T) are widened to fp32 per item (K, V) and per row
// block (Q, dO), and the gradients rounded once when they are written.
template <typename T>
void attention_bwd_f32(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                        const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                        const MaskArgs& ma, float scale, const Dropout& drop,
                        at::Tensor& dq, at::Tensor& dk, at::Tensor& dv) {
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
    const auto blocks = make_row_blocks(ma, b, b + 1, 1, Lq, kBlockMBwd, false);

    for (int h = hk * group; h < (hk + 1) * group; ++h) {
      const int bh = b * H + h;
      zero_uncovered_rows<T>(blocks, Lq, d, dqp + ((int64_t)b * H + h) * Lq * d, d, nullptr);
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
        m.block_ranges(i0, blk.i1, &pre, &lo, &hi);
        for_each_key_chunk(pre, lo, hi, kChunkBwd, [&](int c0, int w) {
          // S^T = K_chunk Q^T  (w x rows)
          at::native::cpublas::brgemm(w, rows, d, k_ld, rows, rows, false, kb + c0 * k_ld,
                                      qt, pt);
          // dP^T = V_chunk dO^T
          at::native::cpublas::brgemm(w, rows, d, v_ld, rows, rows, false, vb + c0 * v_ld,
                                      dot, dpt);
          // dV += P^T dO ; dK += scale dS^T Q ; dQ^T += scale K^T dS^T
          // (dV uses the unscaled P^T, so dS^T is scaled row by row as it is produced)
          bwd_p_ds_tile(m, i0, blk.i1, c0, w, scale, drop, bh, st, pt, dpt,
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
void attention_bwd_native_bf16(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
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
}  // namespace

void attention_bwd(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                   const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                   const MaskArgs& ma, float scale, const Dropout& drop, bool native_bf16,
                   at::Tensor& dq, at::Tensor& dk, at::Tensor& dv) {
  switch (q.scalar_type()) {
    case at::kFloat:
      return attention_bwd_f32<float>(dout, q, k, v, out, lse, ma, scale, drop, dq, dk, dv);
    case at::kBFloat16:
      if (native_bf16)
        return attention_bwd_native_bf16(dout, q, k, v, out, lse, ma, scale, drop, dq, dk, dv);
      return attention_bwd_f32<BFloat16>(dout, q, k, v, out, lse, ma, scale, drop, dq, dk, dv);
    case at::kHalf:
      return attention_bwd_f32<Half>(dout, q, k, v, out, lse, ma, scale, drop, dq, dk, dv);
    default: TORCH_CHECK(false, "attention (cpu): unsupported dtype ", q.scalar_type());
  }
}

}  // namespace janus_cpu
