// The row work of the whole JANUS criterion (janus_spec.md 6.1) in one forward and one
// backward pass, reading each logit row once per pass and writing each gradient element once.
//
// Inputs: AR logits a (N, V), NAR logits n and AUX logits x (M, V), AR targets (N,), masked
// targets (M,), and idx (M,): the AR row of each masked row. Per AR row r: CE(a_r, t_r). Per
// masked row m (r = idx[m], target t_m): CE(n_m), CE(x_m) and the three symmetric KLs
// KLs(a_r, n_m), KLs(a_r, x_m), KLs(n_m, x_m). A masked row whose target is ignore_index has
// none of its five terms (and is not read); an AR row whose target is ignore_index has no CE.
//
// Forward, per masked row (AR row a, NAR row n, AUX row x):
//   pass 1: the three row maxima m_a, m_n, m_x (0 for an all -inf row);
//   pass 2: with t_s = s - m_s (exact), e_s = exp(t_s), one sweep accumulates
//     Z_s = sum e_s, U_s = sum t_s (for the smoothing term), and for each pair (p, q)
//     A_pq^p = sum e_p (t_p - t_q), A_pq^q = sum e_q (t_p - t_q),
//   so CE_s = (1-eps)(log Z_s - t_s[t]) + eps (log Z_s - U_s / V) and
//   KLs(p, q) = 1/2 (s_p - s_q) with s_p = A_pq^p / Z_p, s_q = A_pq^q / Z_q (csrc/cpu/loss.cpp
//   derives it). 3 exps per element triple instead of the 9 of six separate kernels, and the
//   three rows (3 x 4V bytes) stay in L2 between the two passes.
// Saved: per AR row [m_a, 1/Z_a]; per masked row [m_a, 1/Z_a, m_n, 1/Z_n, m_x, 1/Z_x,
//   s_an^p, s_an^q, s_ax^p, s_ax^q, s_nx^p, s_nx^q].
//
// Backward, upstream gradients g_ar (N,) for the AR CE rows and g_m (M, 5) for
// [CE(n), CE(x), KLs(a,n), KLs(a,x), KLs(n,x)]; with p_s = e_s / Z_s and k_pq = g_pq / 2:
//   da = c_a (p_a - eps/V - (1-eps)[v == t_r]) + k_an [p_a (d_an - s_an^p + 1) - p_n]
//                                              + k_ax [p_a (d_ax - s_ax^p + 1) - p_x]
//   dn = c_n (p_n - eps/V - (1-eps)[v == t_m]) + k_an [p_n (s_an^q + 1 - d_an) - p_a]
//                                              + k_nx [p_n (d_nx - s_nx^p + 1) - p_x]
//   dx = c_x (p_x - ...)                       + k_ax [p_x (s_ax^q + 1 - d_ax) - p_a]
//                                              + k_nx [p_x (s_nx^q + 1 - d_nx) - p_n]
//   (d_pq = t_p - t_q). A term with a zero upstream gradient is left out entirely (so a
//   zero-weight infinite KL does not poison the rows); a term with an infinite loss and a
//   non-zero gradient makes its two gradient rows NaN, exactly as the separate ops do.
//
// An AR row claimed by more than one masked row (idx with repeats: never the case for JANUS
// batches, but legal) is handled by a second, serial sweep that adds the extra KL gradients
// into the AR gradient row.
#include <vector>

#include "janus/loss_args.h"
#include "isa_library.h"
#include "loss_rows.h"

namespace {

using namespace janus_loss_cpu;

constexpr int kMTerms = 5;   // per masked row: CE(n), CE(x), KLs(a,n), KLs(a,x), KLs(n,x)
constexpr int kMStats = 12;  // see the header comment
constexpr int kArStats = 2;

template <typename A>
A safe_max(A m) {  // an all -inf row keeps its exp arguments at -inf (exp -> 0), not NaN
  return m == -std::numeric_limits<A>::infinity() ? A(0) : m;
}

// ------------------------------------------------------------------------------ forward
template <typename T>
void triple_fwd(const T* a, const T* n, const T* x, int64_t V, int64_t ta, int64_t tm,
                double eps, typename Tr<T>::Acc* ar_loss, typename Tr<T>::Acc* m_loss,
                typename Tr<T>::Acc* st) {
  using Vt = typename Tr<T>::V;
  using A = typename Tr<T>::Acc;
  constexpr int64_t W = Vt::size();
  const A ma = safe_max(row_max(a, V)), mn = safe_max(row_max(n, V)),
          mx = safe_max(row_max(x, V));
  // acc: Z_a Z_n Z_x U_a U_n U_x A_an^a A_an^n A_ax^a A_ax^x A_nx^n A_nx^x
  double acc[12] = {0};
  const Vt vma(ma), vmn(mn), vmx(mx);
  for (int64_t o = 0; o < V; o += kChunk) {
    const int64_t len = std::min<int64_t>(kChunk, V - o);
    Vt s[12];
    for (auto& v : s) v = Vt(0);
    int64_t i = 0;
    for (; i + W <= len; i += W) {
      const Vt ta_ = Tr<T>::load(a + o + i) - vma, tn_ = Tr<T>::load(n + o + i) - vmn,
               tx_ = Tr<T>::load(x + o + i) - vmx;
      const Vt ea = vexp(ta_), en = vexp(tn_), ex = vexp(tx_);
      const Vt dan = ta_ - tn_, dax = ta_ - tx_, dnx = tn_ - tx_;
      s[0] += ea; s[1] += en; s[2] += ex;
      s[3] += ta_; s[4] += tn_; s[5] += tx_;
      s[6] = fma_nz(ea, dan, s[6]); s[7] = fma_nz(en, dan, s[7]);
      s[8] = fma_nz(ea, dax, s[8]); s[9] = fma_nz(ex, dax, s[9]);
      s[10] = fma_nz(en, dnx, s[10]); s[11] = fma_nz(ex, dnx, s[11]);
    }
    for (int k = 0; k < 12; ++k) acc[k] += vsum_all(s[k]);
    for (; i < len; ++i) {
      const A ta_ = static_cast<A>(a[o + i]) - ma, tn_ = static_cast<A>(n[o + i]) - mn,
              tx_ = static_cast<A>(x[o + i]) - mx;
      const A ea = std::exp(ta_), en = std::exp(tn_), ex = std::exp(tx_);
      const A dan = ta_ - tn_, dax = ta_ - tx_, dnx = tn_ - tx_;
      acc[0] += ea; acc[1] += en; acc[2] += ex;
      acc[3] += ta_; acc[4] += tn_; acc[5] += tx_;
      acc[6] += mul_nz(ea, dan); acc[7] += mul_nz(en, dan);
      acc[8] += mul_nz(ea, dax); acc[9] += mul_nz(ex, dax);
      acc[10] += mul_nz(en, dnx); acc[11] += mul_nz(ex, dnx);
    }
  }
  const double lz[3] = {std::log(acc[0]), std::log(acc[1]), std::log(acc[2])};
  auto ce = [&](int s, double t_target) {
    double l = (1.0 - eps) * (lz[s] - t_target);
    if (eps > 0) l += eps * (lz[s] - acc[3 + s] / double(V));  // eps = 0: a -inf U_s is fine
    return static_cast<A>(l);
  };
  if (ar_loss) *ar_loss = ta >= 0 ? ce(0, double(static_cast<A>(a[ta])) - double(ma)) : A(0);
  m_loss[0] = ce(1, double(static_cast<A>(n[tm])) - double(mn));
  m_loss[1] = ce(2, double(static_cast<A>(x[tm])) - double(mx));
  const double sp[3] = {acc[6] / acc[0], acc[8] / acc[0], acc[10] / acc[1]};
  const double sq[3] = {acc[7] / acc[1], acc[9] / acc[2], acc[11] / acc[2]};
  const A m3[3] = {ma, mn, mx};
  for (int k = 0; k < 3; ++k) {
    m_loss[2 + k] = static_cast<A>(0.5 * (sp[k] - sq[k]));
    st[2 * k] = m3[k];
    st[2 * k + 1] = static_cast<A>(1.0 / acc[k]);
    st[6 + 2 * k] = static_cast<A>(sp[k]);
    st[7 + 2 * k] = static_cast<A>(sq[k]);
  }
}

// ----------------------------------------------------------------------------- backward
// Upstream coefficients of one masked row: c_a (AR CE; 0 when the AR row's CE is not part of
// this call), c_n, c_x, and the halved KL gradients k_an, k_ax, k_nx.
struct Coef {
  double ca, cn, cx, kan, kax, knx;
};

// ACC_A: add into `da` (an AR row claimed by several masked rows) instead of writing it.
template <typename T, bool ACC_A>
void triple_bwd(const T* a, const T* n, const T* x, T* da, T* dn, T* dx, int64_t V, int64_t ta,
                int64_t tm, double eps, Coef c, const typename Tr<T>::Acc* st) {
  using Vt = typename Tr<T>::V;
  using A = typename Tr<T>::Acc;
  constexpr int64_t W = Vt::size();
  // A KL term with a non-zero gradient but an infinite / undefined loss: both its gradient
  // rows are NaN (filled at the end); the term is dropped from the arithmetic below.
  bool nan_a = false, nan_n = false, nan_x = false;
  auto check_pair = [&](double& k, int pair, int s1, int s2, bool& n1, bool& n2) {
    if (k == 0) return;
    const double d = double(st[6 + 2 * pair]) - double(st[7 + 2 * pair]);
    if (!std::isfinite(d) || !std::isfinite(double(st[2 * s1 + 1])) ||
        !std::isfinite(double(st[2 * s2 + 1]))) {
      n1 = n2 = true;
      k = 0;
    }
  };
  check_pair(c.kan, 0, 0, 1, nan_a, nan_n);
  check_pair(c.kax, 1, 0, 2, nan_a, nan_x);
  check_pair(c.knx, 2, 1, 2, nan_n, nan_x);
  const double e0 = eps / double(V);

  // One element in precision S (float for the vector tails, double for the target entries,
  // where p_t - (1 - eps) would cancel in float). Returns (da, dn, dx) without the target
  // terms; the caller adds them.
  auto elem = [&](int64_t i, auto zero, auto* out) {
    using S = decltype(zero);
    const S ta_ = S(static_cast<A>(a[i])) - S(st[0]), tn_ = S(static_cast<A>(n[i])) - S(st[2]),
            tx_ = S(static_cast<A>(x[i])) - S(st[4]);
    const S pa = std::exp(ta_) * S(st[1]), pn = std::exp(tn_) * S(st[3]),
            px = std::exp(tx_) * S(st[5]);
    const S dan = ta_ - tn_, dax = ta_ - tx_, dnx = tn_ - tx_;
    S ga = S(c.ca) * (pa - S(e0)), gn = S(c.cn) * (pn - S(e0)), gx = S(c.cx) * (px - S(e0));
    if (c.kan != 0) {
      ga += S(c.kan) * (mul_nz(pa, dan - S(st[6]) + S(1)) - pn);
      gn += S(c.kan) * (mul_nz(pn, S(st[7]) + S(1) - dan) - pa);
    }
    if (c.kax != 0) {
      ga += S(c.kax) * (mul_nz(pa, dax - S(st[8]) + S(1)) - px);
      gx += S(c.kax) * (mul_nz(px, S(st[9]) + S(1) - dax) - pa);
    }
    if (c.knx != 0) {
      gn += S(c.knx) * (mul_nz(pn, dnx - S(st[10]) + S(1)) - px);
      gx += S(c.knx) * (mul_nz(px, S(st[11]) + S(1) - dnx) - pn);
    }
    out[0] = ga; out[1] = gn; out[2] = gx;
  };
  auto put = [&](int64_t i, const A* g) {
    da[i] = static_cast<T>(ACC_A ? double(static_cast<A>(da[i])) + g[0] : g[0]);
    dn[i] = static_cast<T>(g[1]);
    dx[i] = static_cast<T>(g[2]);
  };
  auto scalar = [&](int64_t i) {
    A g[3];
    elem(i, A(0), g);
    put(i, g);
  };

  // Non-temporal stores when the three output rows share an alignment (always for fp32 rows
  // of a V that is a multiple of 16); the accumulated AR row uses ordinary stores.
  int64_t head = nt_head(dn, dx, V);
  if (head >= 0 && !ACC_A && nt_head(da, dn, V) != head) head = -1;
  const bool nt = head >= 0;
  int64_t i = 0;
  for (; i < std::max<int64_t>(head, 0); ++i) scalar(i);
  const Vt vma(st[0]), viza(st[1]), vmn(st[2]), vizn(st[3]), vmx(st[4]), vizx(st[5]);
  const Vt ve0(static_cast<A>(e0));
  const Vt vca(static_cast<A>(c.ca)), vcn(static_cast<A>(c.cn)), vcx(static_cast<A>(c.cx));
  const Vt vkan(static_cast<A>(c.kan)), vkax(static_cast<A>(c.kax)), vknx(static_cast<A>(c.knx));
  // All-ones / all-zeros lane masks: a dropped term contributes exactly 0 even where its
  // arithmetic would give inf * 0.
  const Vt on_an = vkan != Vt(0), on_ax = vkax != Vt(0), on_nx = vknx != Vt(0);
  const Vt sp1_an(st[6] - A(1)), sq1_an(st[7] + A(1)), sp1_ax(st[8] - A(1)),
      sq1_ax(st[9] + A(1)), sp1_nx(st[10] - A(1)), sq1_nx(st[11] + A(1));
  for (; i + 2 * W <= V; i += 2 * W) {
    Vt ga[2], gn[2], gx[2];
    for (int u = 0; u < 2; ++u) {
      const int64_t j = i + u * W;
      const Vt ta_ = Tr<T>::load(a + j) - vma, tn_ = Tr<T>::load(n + j) - vmn,
               tx_ = Tr<T>::load(x + j) - vmx;
      const Vt pa = vexp(ta_) * viza, pn = vexp(tn_) * vizn, px = vexp(tx_) * vizx;
      const Vt dan = ta_ - tn_, dax = ta_ - tx_, dnx = tn_ - tx_;
      ga[u] = vca * (pa - ve0)
            + (on_an & (vkan * (mul_nz(pa, dan - sp1_an) - pn)))
            + (on_ax & (vkax * (mul_nz(pa, dax - sp1_ax) - px)));
      gn[u] = vcn * (pn - ve0)
            + (on_an & (vkan * (mul_nz(pn, sq1_an - dan) - pa)))
            + (on_nx & (vknx * (mul_nz(pn, dnx - sp1_nx) - px)));
      gx[u] = vcx * (px - ve0)
            + (on_ax & (vkax * (mul_nz(px, sq1_ax - dax) - pa)))
            + (on_nx & (vknx * (mul_nz(px, sq1_nx - dnx) - pn)));
      if constexpr (ACC_A) ga[u] = ga[u] + Tr<T>::load(da + j);
    }
    Tr<T>::store2(da + i, ga[0], ga[1], nt && !ACC_A);
    Tr<T>::store2(dn + i, gn[0], gn[1], nt);
    Tr<T>::store2(dx + i, gx[0], gx[1], nt);
  }
  for (; i < V; ++i) scalar(i);
  if (nt) store_fence();  // order the target fix-ups after this thread's streaming stores

  // Target entries, recomputed in double with the -(1 - eps) c term.
  double g[3];
  if (!ACC_A && ta >= 0 && c.ca != 0) {
    elem(ta, 0.0, g);
    da[ta] = static_cast<T>(g[0] - c.ca * (1.0 - eps));
  }
  elem(tm, 0.0, g);
  dn[tm] = static_cast<T>(g[1] - c.cn * (1.0 - eps));
  dx[tm] = static_cast<T>(g[2] - c.cx * (1.0 - eps));
  const double qnan = std::nan("");
  if (nan_a) fill_row(da, V, qnan);
  if (nan_n) fill_row(dn, V, qnan);
  if (nan_x) fill_row(dx, V, qnan);
}

// ------------------------------------------------------------------------------ drivers
struct Plan {
  std::vector<int64_t> first;   // (N,): the first masked row claiming each AR row, or -1
  std::vector<int64_t> extras;  // masked rows whose AR row was already claimed
};

struct Args {
  at::Tensor a, n, x, ta, tm, idx;
  int64_t N, M, V;
};

Args check_args(const at::Tensor& ar, const at::Tensor& nar, const at::Tensor& aux,
                const at::Tensor& ar_t, const at::Tensor& m_t, const at::Tensor& idx,
                int64_t ignore_index) {
  check_logits(ar, "ar_logits");
  check_logits(nar, "nar_logits");
  check_logits(aux, "aux_logits");
  janus::check_janus_logits(ar, nar, aux);
  Args r{rows_contig(ar), rows_contig(nar), rows_contig(aux), ar_t.contiguous(),
         m_t.contiguous(), idx.contiguous(), ar.size(0), nar.size(0), ar.size(1)};
  check_targets(r.ta, r.N, r.V, ignore_index);
  check_targets(r.tm, r.M, r.V, ignore_index);
  check_rowvec(r.idx, r.M, "ar_kl_rows", at::kLong);
  return r;
}

Plan make_plan(const Args& g) {
  Plan p;
  p.first.assign(size_t(g.N), -1);
  const int64_t* ip = g.idx.const_data_ptr<int64_t>();
  for (int64_t m = 0; m < g.M; ++m) {
    TORCH_CHECK(ip[m] >= 0 && ip[m] < g.N, "ar_kl_rows: value ", ip[m], " at masked row ", m,
                " is not an AR row index in [0, ", g.N, ")");
    if (p.first[ip[m]] < 0)
      p.first[ip[m]] = m;
    else
      p.extras.push_back(m);
  }
  return p;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> janus_rows_fwd(
    const at::Tensor& ar, const at::Tensor& nar, const at::Tensor& aux, const at::Tensor& ar_t,
    const at::Tensor& m_t, const at::Tensor& idx, double eps, int64_t ignore_index) {
  TORCH_CHECK(eps >= 0 && eps <= 1, "label_smoothing: must be in [0, 1], got ", eps);
  const Args g = check_args(ar, nar, aux, ar_t, m_t, idx, ignore_index);
  const Plan plan = make_plan(g);
  const auto opt = g.a.options().dtype(acc_type(g.a.scalar_type()));
  at::Tensor ar_loss = at::empty({g.N}, opt), ar_st = at::empty({g.N, kArStats}, opt);
  at::Tensor m_loss = at::empty({g.M, kMTerms}, opt), m_st = at::empty({g.M, kMStats}, opt);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, g.a.scalar_type(), "janus_rows_fwd",
                                  [&] {
    using A = typename Tr<scalar_t>::Acc;
    const scalar_t *ap = g.a.const_data_ptr<scalar_t>(), *np = g.n.const_data_ptr<scalar_t>(),
                   *xp = g.x.const_data_ptr<scalar_t>();
    const int64_t sa = g.a.stride(0), sn = g.n.stride(0), sx = g.x.stride(0), V = g.V;
    const int64_t *tap = g.ta.const_data_ptr<int64_t>(), *tmp = g.tm.const_data_ptr<int64_t>(),
                  *ip = g.idx.const_data_ptr<int64_t>();
    A *alp = ar_loss.data_ptr<A>(), *asp = ar_st.data_ptr<A>();
    A *mlp = m_loss.data_ptr<A>(), *msp = m_st.data_ptr<A>();
    auto tgt = [&](int64_t t) { return t == ignore_index ? int64_t(-1) : t; };
    auto zero_m = [&](int64_t m) {
      std::fill(mlp + kMTerms * m, mlp + kMTerms * (m + 1), A(0));
      std::fill(msp + kMStats * m, msp + kMStats * (m + 1), A(0));
    };
    at::parallel_for(0, g.N, grain_for(3 * V), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t m = plan.first[r];
        const int64_t ta = tgt(tap[r]);
        A* lr = alp + r;
        A* sr = asp + kArStats * r;
        if (m >= 0 && tmp[m] != ignore_index) {
          A* st = msp + kMStats * m;
          triple_fwd<scalar_t>(ap + r * sa, np + m * sn, xp + m * sx, V, ta, tmp[m], eps, lr,
                               mlp + kMTerms * m, st);
          sr[0] = st[0];
          sr[1] = st[1];
          continue;
        }
        if (m >= 0) zero_m(m);
        if (ta < 0) {
          *lr = 0;
          sr[0] = sr[1] = 0;
        } else if (eps > 0) {
          ce_row_fwd<scalar_t, true>(ap + r * sa, V, ta, eps, lr, sr);
        } else {
          ce_row_fwd<scalar_t, false>(ap + r * sa, V, ta, 0.0, lr, sr);
        }
      }
    });
    const int64_t E = int64_t(plan.extras.size());
    at::parallel_for(0, E, grain_for(3 * V), [&](int64_t e0, int64_t e1) {
      for (int64_t e = e0; e < e1; ++e) {
        const int64_t m = plan.extras[e], r = ip[m];
        if (tmp[m] == ignore_index) {
          zero_m(m);
          continue;
        }
        triple_fwd<scalar_t>(ap + r * sa, np + m * sn, xp + m * sx, V, -1, tmp[m], eps, nullptr,
                             mlp + kMTerms * m, msp + kMStats * m);
      }
    });
  });
  return {ar_loss, m_loss, ar_st, m_st};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> janus_rows_bwd(
    const at::Tensor& g_ar_, const at::Tensor& g_m_, const at::Tensor& ar, const at::Tensor& nar,
    const at::Tensor& aux, const at::Tensor& ar_t, const at::Tensor& m_t, const at::Tensor& idx,
    const at::Tensor& ar_st_, const at::Tensor& m_st_, double eps, int64_t ignore_index) {
  const Args g = check_args(ar, nar, aux, ar_t, m_t, idx, ignore_index);
  const Plan plan = make_plan(g);
  const auto acc = acc_type(g.a.scalar_type());
  check_rowvec(g_ar_, g.N, "grad_ar", acc);
  auto check_2d = [&](const at::Tensor& t, int64_t R, int64_t C, const char* name) {
    TORCH_CHECK(t.dim() == 2 && t.size(0) == R && t.size(1) == C && t.scalar_type() == acc,
                name, ": expected (", R, ", ", C, ") ", acc, ", got ", t.sizes(), " ",
                t.scalar_type());
  };
  check_2d(g_m_, g.M, kMTerms, "grad_masked");
  check_2d(ar_st_, g.N, kArStats, "ar_stats");
  check_2d(m_st_, g.M, kMStats, "masked_stats");
  const at::Tensor g_ar = g_ar_.contiguous(), g_m = g_m_.contiguous();
  const at::Tensor ar_st = ar_st_.contiguous(), m_st = m_st_.contiguous();
  at::Tensor da = empty_rows(g.N, g.V, g.a.options()), dn = empty_rows(g.M, g.V, g.a.options()),
             dx = empty_rows(g.M, g.V, g.a.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, g.a.scalar_type(), "janus_rows_bwd",
                                  [&] {
    using A = typename Tr<scalar_t>::Acc;
    const scalar_t *ap = g.a.const_data_ptr<scalar_t>(), *np = g.n.const_data_ptr<scalar_t>(),
                   *xp = g.x.const_data_ptr<scalar_t>();
    scalar_t *dap = da.data_ptr<scalar_t>(), *dnp = dn.data_ptr<scalar_t>(),
             *dxp = dx.data_ptr<scalar_t>();
    const int64_t sa = g.a.stride(0), sn = g.n.stride(0), sx = g.x.stride(0), V = g.V;
    const int64_t *tap = g.ta.const_data_ptr<int64_t>(), *tmp = g.tm.const_data_ptr<int64_t>(),
                  *ip = g.idx.const_data_ptr<int64_t>();
    const A *gap = g_ar.const_data_ptr<A>(), *gmp = g_m.const_data_ptr<A>();
    const A *asp = ar_st.const_data_ptr<A>(), *msp = m_st.const_data_ptr<A>();
    const size_t row_bytes = size_t(V) * sizeof(scalar_t);
    // The masked rows' gradients are written in AR-row order (scattered): fault them in with
    // one parallel sweep first; the AR rows are faulted by the thread that writes them.
    at::parallel_for(0, g.M, grain_for(V), [&](int64_t m0, int64_t m1) {
      prefault(dnp + m0 * V, size_t(m1 - m0) * row_bytes);
      prefault(dxp + m0 * V, size_t(m1 - m0) * row_bytes);
    });
    auto coef = [&](int64_t m, double ca) {
      const A* gm = gmp + kMTerms * m;
      return Coef{ca, gm[0], gm[1], 0.5 * gm[2], 0.5 * gm[3], 0.5 * gm[4]};
    };
    at::parallel_for(0, g.N, grain_for(3 * V), [&](int64_t r0, int64_t r1) {
      prefault(dap + r0 * V, size_t(r1 - r0) * row_bytes);
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t m = plan.first[r];
        const bool ce_a = tap[r] != ignore_index;
        if (m >= 0 && tmp[m] != ignore_index) {
          triple_bwd<scalar_t, false>(ap + r * sa, np + m * sn, xp + m * sx, dap + r * V,
                                      dnp + m * V, dxp + m * V, V, ce_a ? tap[r] : -1, tmp[m],
                                      eps, coef(m, ce_a ? gap[r] : 0.0), msp + kMStats * m);
          continue;
        }
        if (m >= 0) {
          fill_row(dnp + m * V, V, 0.0);
          fill_row(dxp + m * V, V, 0.0);
        }
        if (ce_a)
          ce_row_bwd<scalar_t>(ap + r * sa, dap + r * V, V, tap[r], eps, gap[r],
                               asp + kArStats * r);
        else
          fill_row(dap + r * V, V, 0.0);
      }
      store_fence();
    });
    // Repeated AR rows: serial, since two extras may add into the same AR gradient row.
    for (const int64_t m : plan.extras) {
      const int64_t r = ip[m];
      if (tmp[m] == ignore_index) {
        fill_row(dnp + m * V, V, 0.0);
        fill_row(dxp + m * V, V, 0.0);
        continue;
      }
      triple_bwd<scalar_t, true>(ap + r * sa, np + m * sn, xp + m * sx, dap + r * V,
                                 dnp + m * V, dxp + m * V, V, -1, tmp[m], eps, coef(m, 0.0),
                                 msp + kMStats * m);
    }
    store_fence();
  });
  return {da, dn, dx};
}

}  // namespace

namespace {
void register_janus_rows(torch::Library& m) {
  m.impl("janus_rows_fwd", &janus_rows_fwd);
  m.impl("janus_rows_bwd", &janus_rows_bwd);
}
}  // namespace

// schemas: csrc/include/janus/op_schemas.h
JANUS_CPU_KERNELS(register_janus_rows, register_janus_rows)
