// Pieces shared by the CPU attention backward drivers: the brgemm ones in attention_bwd.cpp
// (transposed tiles; long sequences and native bf16) and the small-tile one in
// attention_bwd_small.cpp (IWSLT-sized items): work items, per-row statistics, the score
// modifiers of a head, the call's shapes and strides, and the per-item scratch.
#pragma once
#include "attention_common.h"

namespace janus_cpu {

// One item per (b, kv head): it owns dK/dV of that head and dQ of its query heads.
struct BwdItem { int b, hk; int64_t cost; };

inline std::vector<BwdItem> make_bwd_items(const MaskArgs& ma, int B, int Hkv) {
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
inline void bwd_row_stats(const janus::SampleMask& m, int i0, int rows, int d, const T* gblk,
                   int64_t gs_l, const T* oblk, int64_t os_l, const float* lrow, int64_t ls_l,
                   BwdRowStats& st, int at = 0) {   // rows go to entries [at, at + rows) of st
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
    st.delta[at + r] = acc;
    const float l = lrow[(int64_t)r * ls_l];
    st.lse[at + r] = (l == kNegInf) ? std::numeric_limits<float>::infinity() : l;
    m.row_ranges(i0 + r, &st.pre[at + r], &st.lo[at + r], &st.hi[at + r]);
  }
}

// The score modifiers of one (b, h), as the backward tile applies them. bias / dbias are
// shifted by Lq - 1: bias[j - i] is the rel_bias entry of (row i, key j), dbias[j - i] the
// (b, h) slab of d_rel_bias it accumulates into (one writer per (b, h): no races).
struct BwdHeadMods {
  bool on = false;
  float softcap = 0.f;
  const float* bias = nullptr;
  float* dbias = nullptr;
};

// The BwdHeadMods of (b, h). mods.d_rel_bias here is a (B, H, rel_len) slab (attention_bwd).
inline BwdHeadMods head_mods(const ScoreMods& mods, int b, int h, int H, int Lq) {
  BwdHeadMods hm;
  hm.on = mods.on();
  hm.softcap = mods.softcap;
  if (mods.rel_bias) {
    hm.bias = mods.rel_bias + h * mods.rel_len + (Lq - 1);
    if (mods.d_rel_bias) hm.dbias = mods.d_rel_bias + ((int64_t)b * H + h) * mods.rel_len + (Lq - 1);
  }
  return hm;
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
inline BwdView<T> bwd_view(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
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
  template <typename O>   // the gradients' dtype; nt: non-temporal stores (store_floats)
  void write_dkdv(O* dkb, O* dvb, int Lk, int d, bool nt) const {
    store_row(dkacc, dkb, (int64_t)kv * d, nt);
    store_row(dvacc, dvb, (int64_t)kv * d, nt);
    store_row(nullptr, dkb + (int64_t)kv * d, (int64_t)(Lk - kv) * d, nt);
    store_row(nullptr, dvb + (int64_t)kv * d, (int64_t)(Lk - kv) * d, nt);
    if (nt) _mm_sfence();
  }
};

}  // namespace janus_cpu
