// Fused row losses on CPU: bidirectional (symmetric) KL between two logit matrices and the
// JANUS label-smoothed cross entropy. Forward saves only per-row scalars; backward recomputes
// the softmaxes from the logits. Inputs are read-only.
//
// ---------------------------------------------------------------------------------------
// Symmetric KL, per row r (x, y: logits of one row, T: temperature, it = 1/T):
//   x' = x*it, y' = y*it, p = softmax(x'), q = softmax(y'), d = x' - y'
//   KL(p||q) + KL(q||p) = sum_v (p_v - q_v)(log p_v - log q_v) = sum_v (p_v - q_v) d_v
//   (the two log-normalizers cancel because sum(p - q) = 0), so with s_p = sum p d,
//   s_q = sum q d:   loss_r = 0.5 (s_p - s_q)
//   dloss_r/dx = 0.5 it [p (d - s_p + 1) - q]      dloss_r/dy = 0.5 it [q (1 + s_q - d) - p]
//   Any constant shift c of d cancels in both (sum p = sum q = 1), so the kernels use
//   d~ = (x' - m_x) - (y' - m_y) = d - (m_x - m_y): those two differences are the exp
//   arguments anyway and are exact for the entries that matter, which keeps large logits
//   (|x| ~ 1e4, or x = y + 1e4) accurate where d itself would lose ~1e-3 to rounding.
//   One online pass per row keeps m_x, Z_x = sum e^{x'-m_x}, A_x = sum e^{x'-m_x} d~ (and
//   the same for y); when a running max grows the sums are rescaled and A is re-shifted:
//   sum e (d - c_new) = A + (c_old - c_new) Z.
//   Saved per row: [m_x, 1/Z_x, m_y, 1/Z_y, s~_p, s~_q].
//
// -inf logits (the 0 log 0 = 0 convention): an entry where both x and y are -inf contributes
// 0 to the loss and gets 0 gradient. -inf on one side only makes the KL truly infinite: the
// row's loss is +inf and, since the gradient of an infinite loss is undefined, both gradient
// rows are NaN. Each row needs a finite logit on each side (an all -inf row gives NaN); use
// row_mask to skip rows (padding): masked rows give loss 0 and zero gradients and are never
// read. NaN / +inf logits give NaN.
//
// ---------------------------------------------------------------------------------------
// JANUS label-smoothed cross entropy, per row with target t (eps spread over all V entries,
// the target included; t == ignore_index gives loss 0 and a zero gradient row):
//   loss_r = (1-eps)(-log p_t) + eps mean_v(-log p_v) = lse - (1-eps) x_t - eps mean_v x_v
//   dloss_r/dx_v = p_v - eps/V - (1-eps)[v == t]
//   With u_v = x_v - m: -log p_v = log Z - u_v, so the loss is accumulated from exact u_v.
//   A -inf logit makes mean_v(-log p_v) infinite: loss +inf when eps > 0 (the gradient
//   formula above stays finite and is returned as is). Saved per row: [m, 1/Z].
//
// Performance notes (see the design notes in the docstrings of janus_kernels/losses.py):
// exp is at::vec's exp_u20 (~1e-7 relative error, enough for fp32 losses), the forward
// computes the max of chunk k+1 while the exp loop runs on chunk k (chunk in L1), gradients
// are written with non-temporal stores (no read-for-ownership), and fresh gradient memory is
// prefaulted in parallel by the row loop (see prefault) or reused already mapped from a small
// output pool (see OutputPool in output_pool.h; huge pages opt-in).
#include "isa_library.h"
#include "loss_rows.h"

namespace {

using namespace janus_loss_cpu;

// ==================================================================== symmetric KL
// Running state of one row; maxima are "safe" (0 while every value seen is -inf) so the exp
// arguments stay -inf (exp -> 0) instead of NaN.
template <typename A>
struct KLState {
  A mx_raw = -std::numeric_limits<A>::infinity(), my_raw = mx_raw;
  A mx = 0, my = 0;
  double zx = 0, ax = 0, zy = 0, ay = 0;

  // Account for a new chunk whose (scaled) maxima are cx, cy.
  void update(A cx, A cy) {
    mx_raw = nanmax(mx_raw, cx);
    my_raw = nanmax(my_raw, cy);
    const A nmx = mx_raw == -std::numeric_limits<A>::infinity() ? A(0) : mx_raw;
    const A nmy = my_raw == -std::numeric_limits<A>::infinity() ? A(0) : my_raw;
    const double dc = (double(mx) - double(my)) - (double(nmx) - double(nmy));
    if (zx != 0) {
      const double a = std::exp(double(mx) - double(nmx));
      ax = a * (ax + dc * zx);
      zx *= a;
    }
    if (zy != 0) {
      const double a = std::exp(double(my) - double(nmy));
      ay = a * (ay + dc * zy);
      zy *= a;
    }
    mx = nmx;
    my = nmy;
  }
};

// Exp/accumulate pass over n elements of one chunk (vector body + scalar tail). With NEXT,
// the same loop also computes the maxima of the following chunk (n == kChunk), which streams
// from DRAM while this chunk is in L1.
template <typename T, bool NEXT>
void kl_chunk(const T* x, const T* y, int64_t n, typename Tr<T>::Acc it,
              KLState<typename Tr<T>::Acc>& s, typename Tr<T>::Acc* nx,
              typename Tr<T>::Acc* ny) {
  using V = typename Tr<T>::V;
  using A = typename Tr<T>::Acc;
  constexpr int64_t W = V::size();
  const V vit(it), vmx(s.mx), vmy(s.my);
  V zx0(0), zx1(0), ax0(0), ax1(0), zy0(0), zy1(0), ay0(0), ay1(0);
  V nmx0(-std::numeric_limits<A>::infinity()), nmx1 = nmx0, nmy0 = nmx0, nmy1 = nmx0;
  int64_t i = 0;
  for (; i + 2 * W <= n; i += 2 * W) {
    const V tx0 = Tr<T>::load(x + i) * vit - vmx, tx1 = Tr<T>::load(x + i + W) * vit - vmx;
    const V ty0 = Tr<T>::load(y + i) * vit - vmy, ty1 = Tr<T>::load(y + i + W) * vit - vmy;
    const V ex0 = vexp(tx0), ex1 = vexp(tx1), ey0 = vexp(ty0), ey1 = vexp(ty1);
    const V d0 = tx0 - ty0, d1 = tx1 - ty1;
    zx0 += ex0; zx1 += ex1; zy0 += ey0; zy1 += ey1;
    ax0 = fma_nz(ex0, d0, ax0); ax1 = fma_nz(ex1, d1, ax1);
    ay0 = fma_nz(ey0, d0, ay0); ay1 = fma_nz(ey1, d1, ay1);
    if constexpr (NEXT) {
      nmx0 = at::vec::maximum(nmx0, Tr<T>::load(x + kChunk + i));
      nmx1 = at::vec::maximum(nmx1, Tr<T>::load(x + kChunk + i + W));
      nmy0 = at::vec::maximum(nmy0, Tr<T>::load(y + kChunk + i));
      nmy1 = at::vec::maximum(nmy1, Tr<T>::load(y + kChunk + i + W));
    }
  }
  A zx = vsum_all(zx0 + zx1), ax = vsum_all(ax0 + ax1);
  A zy = vsum_all(zy0 + zy1), ay = vsum_all(ay0 + ay1);
  for (; i < n; ++i) {
    const A tx = static_cast<A>(x[i]) * it - s.mx, ty = static_cast<A>(y[i]) * it - s.my;
    const A ex = std::exp(tx), ey = std::exp(ty), d = tx - ty;
    zx += ex; zy += ey;
    ax += mul_nz(ex, d); ay += mul_nz(ey, d);
  }
  s.zx += zx; s.ax += ax; s.zy += zy; s.ay += ay;
  if constexpr (NEXT) {
    *nx = vmax_all(at::vec::maximum(nmx0, nmx1));
    *ny = vmax_all(at::vec::maximum(nmy0, nmy1));
  }
}

// One row forward: writes loss and the 6 saved scalars.
template <typename T>
void kl_row_fwd(const T* x, const T* y, int64_t V, typename Tr<T>::Acc it,
                typename Tr<T>::Acc* loss, typename Tr<T>::Acc* st) {
  using A = typename Tr<T>::Acc;
  KLState<A> s;
  const int64_t nfull = V / kChunk, rem = V - nfull * kChunk;
  A cx = 0, cy = 0;
  if (nfull > 0) {
    cx = row_max(x, kChunk);
    cy = row_max(y, kChunk);
  }
  for (int64_t k = 0; k < nfull; ++k) {
    s.update(cx * it, cy * it);
    const int64_t o = k * kChunk;
    if (k + 1 < nfull)
      kl_chunk<T, true>(x + o, y + o, kChunk, it, s, &cx, &cy);
    else
      kl_chunk<T, false>(x + o, y + o, kChunk, it, s, nullptr, nullptr);
  }
  if (rem > 0) {
    const int64_t o = nfull * kChunk;
    s.update(row_max(x + o, rem) * it, row_max(y + o, rem) * it);
    kl_chunk<T, false>(x + o, y + o, rem, it, s, nullptr, nullptr);
  }
  const double sp = s.ax / s.zx, sq = s.ay / s.zy;
  *loss = static_cast<A>(0.5 * (sp - sq));
  st[0] = s.mx; st[1] = static_cast<A>(1.0 / s.zx);
  st[2] = s.my; st[3] = static_cast<A>(1.0 / s.zy);
  st[4] = static_cast<A>(sp); st[5] = static_cast<A>(sq);
}

// One row backward: dx, dy from the saved scalars; g = upstream grad of this row's loss.
template <typename T>
void kl_row_bwd(const T* x, const T* y, T* dx, T* dy, int64_t V, typename Tr<T>::Acc it,
                typename Tr<T>::Acc g, const typename Tr<T>::Acc* st) {
  using Vt = typename Tr<T>::V;
  using A = typename Tr<T>::Acc;
  constexpr int64_t W = Vt::size();
  if (!std::isfinite(double(st[4]) - double(st[5])) || !std::isfinite(st[1]) ||
      !std::isfinite(st[3])) {  // infinite / undefined loss: the gradient is undefined
    fill_row(dx, V, std::nan(""));
    fill_row(dy, V, std::nan(""));
    return;
  }
  const A mx = st[0], izx = st[1], my = st[2], izy = st[3];
  const A sp1 = st[4] - A(1), sq1 = st[5] + A(1), a = A(0.5) * g * it;
  auto scalar = [&](int64_t i) {
    const A tx = static_cast<A>(x[i]) * it - mx, ty = static_cast<A>(y[i]) * it - my;
    const A p = std::exp(tx) * izx, q = std::exp(ty) * izy, d = tx - ty;
    dx[i] = static_cast<T>(a * (mul_nz(p, d - sp1) - q));
    dy[i] = static_cast<T>(a * (mul_nz(q, sq1 - d) - p));
  };
  const int64_t head = nt_head(dx, dy, V);
  const bool nt = head >= 0;
  int64_t i = 0;
  for (; i < std::max<int64_t>(head, 0); ++i) scalar(i);
  const Vt vit(it), vmx(mx), vmy(my), vizx(izx), vizy(izy), vsp1(sp1), vsq1(sq1), va(a);
  for (; i + 2 * W <= V; i += 2 * W) {
    Vt gx[2], gy[2];
    for (int u = 0; u < 2; ++u) {
      const Vt tx = Tr<T>::load(x + i + u * W) * vit - vmx;
      const Vt ty = Tr<T>::load(y + i + u * W) * vit - vmy;
      const Vt p = vexp(tx) * vizx, q = vexp(ty) * vizy, d = tx - ty;
      gx[u] = va * (mul_nz(p, d - vsp1) - q);
      gy[u] = va * (mul_nz(q, vsq1 - d) - p);
    }
    Tr<T>::store2(dx + i, gx[0], gx[1], nt);
    Tr<T>::store2(dy + i, gy[0], gy[1], nt);
  }
  for (; i < V; ++i) scalar(i);
}

std::tuple<at::Tensor, at::Tensor> symkl_rows_fwd(const at::Tensor& x_, const at::Tensor& y_,
                                                  const c10::optional<at::Tensor>& row_mask_,
                                                  double inv_temperature) {
  check_logits(x_, "logits_p");
  check_logits(y_, "logits_q");
  TORCH_CHECK(x_.sizes() == y_.sizes(), "logits_p and logits_q must have the same shape, got ",
              x_.sizes(), " and ", y_.sizes());
  TORCH_CHECK(x_.scalar_type() == y_.scalar_type(),
              "logits_p and logits_q must share a dtype, got ",
              x_.scalar_type(), " and ", y_.scalar_type());
  TORCH_CHECK(inv_temperature > 0 && std::isfinite(inv_temperature),
              "inv_temperature: must be positive and finite, got ", inv_temperature);
  const int64_t R = x_.size(0), V = x_.size(1);
  const at::Tensor x = rows_contig(x_), y = rows_contig(y_);
  at::Tensor mask;
  if (row_mask_) {
    check_rowvec(*row_mask_, R, "row_mask", at::kBool);
    mask = row_mask_->contiguous();
  }
  const auto opt = x.options().dtype(acc_type(x.scalar_type()));
  at::Tensor loss = at::empty({R}, opt), stats = at::empty({R, 6}, opt);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "symkl_rows_fwd", [&] {
    using A = typename Tr<scalar_t>::Acc;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    const int64_t sx = x.stride(0), sy = y.stride(0);
    const bool* mp = mask.defined() ? mask.const_data_ptr<bool>() : nullptr;
    A* lp = loss.data_ptr<A>();
    A* stp = stats.data_ptr<A>();
    const A it = static_cast<A>(inv_temperature);
    at::parallel_for(0, R, grain_for(V), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        if (mp && !mp[r]) {
          lp[r] = 0;
          std::fill(stp + 6 * r, stp + 6 * r + 6, A(0));
          continue;
        }
        kl_row_fwd<scalar_t>(xp + r * sx, yp + r * sy, V, it, lp + r, stp + 6 * r);
      }
    });
  });
  return {loss, stats};
}

// Writes the gradients into dx, dy ((R, V) contiguous, the logits' dtype); `fresh` says they
// were just allocated (then they are prefaulted in parallel by the row loop).
void symkl_rows_bwd_impl(const at::Tensor& grad_, const at::Tensor& x_, const at::Tensor& y_,
                         const at::Tensor& stats_, const c10::optional<at::Tensor>& row_mask_,
                         double inv_temperature, at::Tensor& dx, at::Tensor& dy, bool fresh) {
  check_logits(x_, "logits_p");
  check_logits(y_, "logits_q");
  TORCH_CHECK(x_.sizes() == y_.sizes() && x_.scalar_type() == y_.scalar_type(),
              "logits_p and logits_q must have the same shape and dtype");
  const int64_t R = x_.size(0), V = x_.size(1);
  const auto at_ = acc_type(x_.scalar_type());
  check_rowvec(grad_, R, "grad", at_);
  TORCH_CHECK(stats_.dim() == 2 && stats_.size(0) == R && stats_.size(1) == 6 &&
                  stats_.scalar_type() == at_,
              "stats: expected (", R, ", 6) ", at_, ", got ", stats_.sizes(), " ",
              stats_.scalar_type());
  const at::Tensor x = rows_contig(x_), y = rows_contig(y_);
  const at::Tensor grad = grad_.contiguous(), stats = stats_.contiguous();
  at::Tensor mask;
  if (row_mask_) {
    check_rowvec(*row_mask_, R, "row_mask", at::kBool);
    mask = row_mask_->contiguous();
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "symkl_rows_bwd", [&] {
    using A = typename Tr<scalar_t>::Acc;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    scalar_t* dxp = dx.data_ptr<scalar_t>();
    scalar_t* dyp = dy.data_ptr<scalar_t>();
    const int64_t sx = x.stride(0), sy = y.stride(0);
    const bool* mp = mask.defined() ? mask.const_data_ptr<bool>() : nullptr;
    const A* gp = grad.const_data_ptr<A>();
    const A* stp = stats.const_data_ptr<A>();
    const A it = static_cast<A>(inv_temperature);
    at::parallel_for(0, R, grain_for(V), [&](int64_t r0, int64_t r1) {
      if (fresh) {
        prefault(dxp + r0 * V, size_t(r1 - r0) * V * sizeof(scalar_t));
        prefault(dyp + r0 * V, size_t(r1 - r0) * V * sizeof(scalar_t));
      }
      for (int64_t r = r0; r < r1; ++r) {
        if (mp && !mp[r]) {
          fill_row(dxp + r * V, V, 0.0);
          fill_row(dyp + r * V, V, 0.0);
          continue;
        }
        kl_row_bwd<scalar_t>(xp + r * sx, yp + r * sy, dxp + r * V, dyp + r * V, V, it, gp[r],
                             stp + 6 * r);
      }
      store_fence();
    });
  });
}

std::tuple<at::Tensor, at::Tensor> symkl_rows_bwd(const at::Tensor& grad, const at::Tensor& x,
                                                  const at::Tensor& y, const at::Tensor& stats,
                                                  const c10::optional<at::Tensor>& row_mask,
                                                  double inv_temperature) {
  const int64_t R = x.dim() == 2 ? x.size(0) : 0, V = x.dim() == 2 ? x.size(1) : 0;
  at::Tensor dx = empty_rows(R, V, x.options()), dy = empty_rows(R, V, x.options());
  symkl_rows_bwd_impl(grad, x, y, stats, row_mask, inv_temperature, dx, dy, true);
  return {dx, dy};
}

// The same into caller-owned gradient buffers: lets a benchmark time the kernel alone, with
// outputs whose pages are already mapped (fresh multi-MiB outputs cost page faults).
void symkl_rows_bwd_into(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& y,
                         const at::Tensor& stats, const c10::optional<at::Tensor>& row_mask,
                         double inv_temperature, at::Tensor dx, at::Tensor dy) {
  for (const auto* t : {&dx, &dy})
    TORCH_CHECK(t->is_contiguous() && t->sizes() == x.sizes() &&
                    t->scalar_type() == x.scalar_type() && t->device() == x.device(),
                "grad_p_out / grad_q_out: expected contiguous tensors shaped and typed like "
                "logits_p (", x.sizes(), " ", x.scalar_type(), ")");
  at::Tensor dx_ = dx, dy_ = dy;
  symkl_rows_bwd_impl(grad, x, y, stats, row_mask, inv_temperature, dx_, dy_, false);
}

std::tuple<at::Tensor, at::Tensor> ce_rows_fwd(const at::Tensor& x_, const at::Tensor& target_,
                                               double label_smoothing, int64_t ignore_index) {
  check_logits(x_, "logits");
  TORCH_CHECK(label_smoothing >= 0 && label_smoothing <= 1,
              "label_smoothing: must be in [0, 1], got ",
              label_smoothing);
  const int64_t R = x_.size(0), V = x_.size(1);
  check_targets(target_, R, V, ignore_index);
  const at::Tensor x = rows_contig(x_), target = target_.contiguous();
  const auto opt = x.options().dtype(acc_type(x.scalar_type()));
  at::Tensor loss = at::empty({R}, opt), stats = at::empty({R, 2}, opt);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "ce_rows_fwd", [&] {
    using A = typename Tr<scalar_t>::Acc;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const int64_t sx = x.stride(0);
    const int64_t* tp = target.const_data_ptr<int64_t>();
    A* lp = loss.data_ptr<A>();
    A* stp = stats.data_ptr<A>();
    at::parallel_for(0, R, grain_for(V), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        if (tp[r] == ignore_index) {
          lp[r] = 0;
          stp[2 * r] = stp[2 * r + 1] = 0;
        } else if (label_smoothing > 0) {
          ce_row_fwd<scalar_t, true>(xp + r * sx, V, tp[r], label_smoothing, lp + r, stp + 2 * r);
        } else {
          ce_row_fwd<scalar_t, false>(xp + r * sx, V, tp[r], 0.0, lp + r, stp + 2 * r);
        }
      }
    });
  });
  return {loss, stats};
}

at::Tensor ce_rows_bwd(const at::Tensor& grad_, const at::Tensor& x_, const at::Tensor& target_,
                       const at::Tensor& stats_, double label_smoothing, int64_t ignore_index) {
  check_logits(x_, "logits");
  const int64_t R = x_.size(0), V = x_.size(1);
  const auto at_ = acc_type(x_.scalar_type());
  check_rowvec(grad_, R, "grad", at_);
  check_targets(target_, R, V, ignore_index);
  TORCH_CHECK(stats_.dim() == 2 && stats_.size(0) == R && stats_.size(1) == 2 &&
                  stats_.scalar_type() == at_,
              "stats: expected (", R, ", 2) ", at_, ", got ", stats_.sizes(), " ",
              stats_.scalar_type());
  const at::Tensor x = rows_contig(x_), target = target_.contiguous();
  const at::Tensor grad = grad_.contiguous(), stats = stats_.contiguous();
  at::Tensor dx = empty_rows(R, V, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "ce_rows_bwd", [&] {
    using A = typename Tr<scalar_t>::Acc;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* dxp = dx.data_ptr<scalar_t>();
    const int64_t sx = x.stride(0);
    const int64_t* tp = target.const_data_ptr<int64_t>();
    const A* gp = grad.const_data_ptr<A>();
    const A* stp = stats.const_data_ptr<A>();
    at::parallel_for(0, R, grain_for(V), [&](int64_t r0, int64_t r1) {
      prefault(dxp + r0 * V, size_t(r1 - r0) * V * sizeof(scalar_t));
      for (int64_t r = r0; r < r1; ++r) {
        if (tp[r] == ignore_index)
          fill_row(dxp + r * V, V, 0.0);
        else
          ce_row_bwd<scalar_t>(xp + r * sx, dxp + r * V, V, tp[r], label_smoothing, gp[r],
                               stp + 2 * r);
      }
      store_fence();
    });
  });
  return dx;
}

}  // namespace

namespace {
void register_losses(torch::Library& m) {
  m.impl("symkl_rows_fwd", &symkl_rows_fwd);
  m.impl("symkl_rows_bwd", &symkl_rows_bwd);
  m.impl("symkl_rows_bwd_into", &symkl_rows_bwd_into);
  m.impl("ce_rows_fwd", &ce_rows_fwd);
  m.impl("ce_rows_bwd", &ce_rows_bwd);
}
}  // namespace

// schemas: csrc/include/janus/op_schemas.h
JANUS_CPU_KERNELS(register_losses, register_losses)
