// CPU attention forward for a few query rows (Lq <= kFwdRowsMax): a decoding step against a
// KV cache (Hugging Face generate(): one row x the cache's keys per (batch, head)).
//
// Per (batch, head) and query row i, over the keys the row sees ([0, pre) U [lo, hi) from the
// descriptor, masked exactly as the tiled forward masks):
//   s_j = q_i . k_j                  dot products against the K rows, Vec::size() keys at once
//   score modifiers (scale folded in), or the scale
//   p_j = exp(s_j - max), l = sum p_j, then dropout on p (kept p / (1 - p_drop))
//   out_i = sum_j p_j v_j / l,  lse_i = max + log l      (rows that see no key: 0 and -inf)
// The tiled forward (attention_fwd.cpp) packs K^T of each (batch, head) for its GEMMs; for one
// row that packing costs more than the row's whole math (a decoding step ran 2x slower than
// SDPA). Every dtype computes in fp32: bf16 / fp16 rows are widened as they are read.
#include "attention_common.h"

namespace janus_cpu {
namespace {

constexpr int kW = Vec::size();

struct RowsItem { int b, h; int64_t cost; };

// acc[0, n) += a * x[0, n)
inline void axpy(float a, const float* x, float* acc, int n) {
  const Vec va(a);
  int c = 0;
  for (; c + kW <= n; c += kW) at::vec::fmadd(va, Vec::loadu(x + c), Vec::loadu(acc + c)).store(acc + c);
  if (c < n) at::vec::fmadd(va, Vec::loadu(x + c, n - c), Vec::loadu(acc + c, n - c)).store(acc + c, n - c);
}

// s[t] = q . key row (c0 + t) for t < w: each group of kW keys sums its products vertically
// and the group is reduced at once (reduce_rows), not one horizontal sum per key.
template <typename T>
void key_dots(const float* q, const T* kb, int64_t k_ld, int c0, int w, int d, float* kf,
              float* s) {
  alignas(64) float part[kW * kW], tmp[kW * kW];
  for (int t0 = 0; t0 < w; t0 += kW) {
    const int n = std::min(kW, w - t0);
    for (int r = 0; r < kW; ++r) {
      Vec a0(0.f), a1(0.f);   // two chains (FMA latency)
      if (r < n) {
        const T* src = kb + (int64_t)(c0 + t0 + r) * k_ld;
        const float* kr = reinterpret_cast<const float*>(src);
        if constexpr (!std::is_same_v<T, float>) {
          widen_row(src, kf, d);
          kr = kf;
        }
        int c = 0;
        for (; c + 2 * kW <= d; c += 2 * kW) {
          a0 = at::vec::fmadd(Vec::loadu(q + c), Vec::loadu(kr + c), a0);
          a1 = at::vec::fmadd(Vec::loadu(q + c + kW), Vec::loadu(kr + c + kW), a1);
        }
        for (; c < d; c += kW) {   // partial loads read zeros past d
          const int k = std::min(kW, d - c);
          a0 = at::vec::fmadd(Vec::loadu(q + c, k), Vec::loadu(kr + c, k), a0);
        }
      }
      (a0 + a1).store(part + r * kW);
    }
    reduce_rows(part, tmp, [](const Vec& a, const Vec& b) { return a + b; }).store(s + t0, n);
  }
}

template <typename T>
void attention_fwd_rows_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const MaskArgs& ma, float scale, const ScoreMods& mods,
                             const Dropout& drop, at::Tensor& out, at::Tensor& lse) {
  const auto [B, H, Lq, d, Hkv, group, Lk, qp, kp, vp, op, lp] = fwd_view<T>(q, k, v, out, lse);
  const auto qs = q.strides(), ks = k.strides(), vs = v.strides(), os = out.strides(),
             lss = lse.strides();
  std::vector<RowsItem> items;
  for (int b = 0; b < B; ++b) {
    const int64_t cost = (int64_t)std::max(1, ma.sample(b).kv_len()) * std::max(Lq, 1);
    for (int h = 0; h < H; ++h) items.push_back({b, h, cost});
  }
  const float row_scale = mods.on() ? 1.f : scale;   // modifiers fold the scale in

  run_dynamic(items, [&](const RowsItem& it) {
    const int b = it.b, h = it.h, hk = h / group;
    const auto m = ma.sample(b);
    const T* kb = kp + b * ks[0] + hk * ks[1];
    const T* vb = vp + b * vs[0] + hk * vs[1];
    const float* bias_h = mods.rel_bias ? mods.rel_bias + h * mods.rel_len + (Lq - 1) : nullptr;
    float* s = scratch<float>(kS, round_up(Lk, kW) + 2 * kW);   // the row's runs, packed
    float* acc = scratch<float>(kAcc, d);
    float* qf = scratch<float>(kQf, d);
    float* kf = scratch<float>(kKf, d);
    float* vf = scratch<float>(kVf, d);
    for (int i = 0; i < Lq; ++i) {
      T* orow = op + b * os[0] + h * os[1] + (int64_t)i * os[2];
      float& lse_i = lp[b * lss[0] + h * lss[1] + (int64_t)i * lss[2]];
      int pre, lo, hi;
      m.row_ranges(i, &pre, &lo, &hi);   // nothing for a padding row
      int run_c0[2], run_w[2], runs = 0, total = 0;
      for_each_key_chunk(pre, lo, hi, Lk + 1, [&](int c0, int w) {
        run_c0[runs] = c0;
        run_w[runs++] = w;
        total += w;
      });
      const T* qrow = qp + b * qs[0] + h * qs[1] + (int64_t)i * qs[2];
      const float* qv = reinterpret_cast<const float*>(qrow);
      if constexpr (!std::is_same_v<T, float>) {
        widen_row(qrow, qf, d);
        qv = qf;
      }
      for (int r = 0, at = 0; r < runs; at += run_w[r], ++r) {
        float* sr = s + at;
        key_dots<T>(qv, kb, ks[2], run_c0[r], run_w[r], d, kf, sr);
        if (mods.on())
          modify_scores_row(sr, run_w[r], scale, mods.softcap,
                            bias_h ? bias_h + run_c0[r] - i : nullptr);
        mask_row_chunk(m, i, run_c0[r], run_w[r], sr, kNegInf);
      }
      const int padded = (int)round_up(total, kW);
      std::fill(s + total, s + padded, kNegInf);   // whole vectors below: pads give exp 0
      Vec vmax(kNegInf);
      for (int t = 0; t < padded; t += kW) vmax = fast_max(vmax, Vec::loadu(s + t));
      const float mx = row_scale *
          at::vec::vec_reduce_all<float>([](Vec& x, Vec& y) { return fast_max(x, y); }, vmax);
      if (mx == kNegInf) {   // a row that sees no key (or none of its keys in the tensor)
        std::fill_n(orow, d, T(0));
        lse_i = kNegInf;
        continue;
      }
      const Vec vscale(row_scale), vm(mx);
      Vec vsum(0.f);
      for (int t = 0; t < padded; t += kW) {
        const Vec p = (Vec::loadu(s + t) * vscale - vm).exp_u20();
        p.store(s + t);
        vsum += p;
      }
      const float l = at::vec::vec_reduce_all<float>([](Vec& x, Vec& y) { return x + y; }, vsum);
      std::fill_n(acc, d, 0.f);
      for (int r = 0, at = 0; r < runs; at += run_w[r], ++r) {
        for (int t = 0; t < run_w[r]; ++t) {
          const int j = run_c0[r] + t;
          float p = s[at + t];
          if (drop.on())
            p = janus::dropout_keep(drop.seed, drop.threshold, b * H + h, i, j) ? p * drop.inv_keep
                                                                                 : 0.f;
          if (p == 0.f) continue;   // masked (or dropped) keys add nothing
          const T* src = vb + (int64_t)j * vs[2];
          const float* vr = reinterpret_cast<const float*>(src);
          if constexpr (!std::is_same_v<T, float>) {
            widen_row(src, vf, d);
            vr = vf;
          }
          axpy(p, vr, acc, d);
        }
      }
      const float inv = 1.f / l;
      at::vec::map([inv](Vec x) { return x * Vec(inv); }, acc, acc, d);
      narrow_row(acc, orow, d);   // plain stores: a decoding step's output is read right away
      lse_i = mx + std::log(l);
    }
  });
}

}  // namespace

void attention_fwd_rows(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                        const MaskArgs& ma, float scale, const ScoreMods& mods,
                        const Dropout& drop, at::Tensor& out, at::Tensor& lse) {
  switch (q.scalar_type()) {
    case at::kFloat:
      return attention_fwd_rows_impl<float>(q, k, v, ma, scale, mods, drop, out, lse);
    case at::kBFloat16:
      return attention_fwd_rows_impl<BFloat16>(q, k, v, ma, scale, mods, drop, out, lse);
    case at::kHalf:
      return attention_fwd_rows_impl<Half>(q, k, v, ma, scale, mods, drop, out, lse);
    default: TORCH_CHECK(false, "attention (cpu): unsupported dtype ", q.scalar_type());
  }
}

}  // namespace janus_cpu
