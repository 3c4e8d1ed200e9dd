// Torch glue for the CUDA loss kernels (loss.cu, janus_loss.cu): CUDA implementations of the
// janus::symkl_rows_*, janus::ce_rows_* ops (schemas in csrc/cpu/loss.cpp) and janus_rows_*
// (schemas in csrc/cpu/janus_loss.cpp). Compiled only in a CUDA build (setup.py,
// JANUS_WITH_CUDA). Out-of-range CE targets and ar_kl_rows values give NaN losses / gradient
// rows here (checking them on the host would need a device sync); the CPU ops raise instead.
// Nothing here synchronises with the device.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cmath>

#include "janus/loss_args.h"
#include "loss_launch.h"

namespace {

int32_t dtype_code(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return JANUS_LOSS_F32;
    case at::kHalf: return JANUS_LOSS_F16;
    case at::kBFloat16: return JANUS_LOSS_BF16;
    case at::kDouble: return JANUS_LOSS_F64;
    default: TORCH_CHECK(false, "logits: expected float32/float16/bfloat16/float64, got ", t);
  }
  return -1;
}

at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

at::Tensor rows_of(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, ": expected a CUDA tensor, got ", t.device());
  TORCH_CHECK(t.dim() == 2 && t.size(1) > 0, name, ": expected a (rows, vocab) tensor, got ",
              t.sizes());
  dtype_code(t.scalar_type());
  return (t.size(1) == 1 || t.stride(1) == 1) ? t : t.contiguous();
}

void check_vec(const at::Tensor& t, int64_t R, const char* name, at::ScalarType dt,
               const at::Tensor& like) {
  TORCH_CHECK(t.device() == like.device() && t.dim() == 1 && t.size(0) == R &&
                  t.scalar_type() == dt,
              name, ": expected a ", dt, " tensor of shape (", R, ") on ", like.device(),
              ", got ", t.scalar_type(), " ", t.sizes(), " on ", t.device());
}

void check(cudaError_t e, const char* what) {
  TORCH_CHECK(e == cudaSuccess, what, ": CUDA launch failed (error code ", int(e), ")");
}

const uint8_t* mask_ptr(const c10::optional<at::Tensor>& m, int64_t R, const at::Tensor& like,
                        at::Tensor& keep) {
  if (!m) return nullptr;
  check_vec(*m, R, "row_mask", at::kBool, like);
  keep = m->contiguous();
  return reinterpret_cast<const uint8_t*>(keep.const_data_ptr<bool>());
}

std::tuple<at::Tensor, at::Tensor> symkl_fwd(const at::Tensor& x_, const at::Tensor& y_,
                                             const c10::optional<at::Tensor>& row_mask,
                                             double inv_temperature) {
  const at::Tensor x = rows_of(x_, "logits_p"), y = rows_of(y_, "logits_q");
  TORCH_CHECK(x.sizes() == y.sizes() && x.scalar_type() == y.scalar_type() &&
                  x.device() == y.device(),
              "logits_p and logits_q must have the same shape, dtype and device");
  TORCH_CHECK(inv_temperature > 0 && std::isfinite(inv_temperature),
              "inv_temperature: must be positive and finite, got ", inv_temperature);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t R = x.size(0), V = x.size(1);
  at::Tensor keep;
  const auto opt = x.options().dtype(acc_type(x.scalar_type()));
  at::Tensor loss = at::empty({R}, opt), stats = at::empty({R, 6}, opt);
  JanusSymKLArgs a{};
  a.x = x.const_data_ptr();
  a.y = y.const_data_ptr();
  a.row_mask = mask_ptr(row_mask, R, x, keep);
  a.loss = loss.data_ptr();
  a.stats = stats.data_ptr();
  a.rows = R; a.vocab = V; a.stride_x = x.stride(0); a.stride_y = y.stride(0);
  a.inv_temperature = inv_temperature;
  a.dtype = dtype_code(x.scalar_type());
  check(janus_symkl_fwd(&a, c10::cuda::getCurrentCUDAStream()), "symkl_rows_fwd");
  return {loss, stats};
}

std::tuple<at::Tensor, at::Tensor> symkl_bwd(const at::Tensor& grad, const at::Tensor& x_,
                                             const at::Tensor& y_, const at::Tensor& stats,
                                             const c10::optional<at::Tensor>& row_mask,
                                             double inv_temperature) {
  const at::Tensor x = rows_of(x_, "logits_p"), y = rows_of(y_, "logits_q");
  TORCH_CHECK(x.sizes() == y.sizes() && x.scalar_type() == y.scalar_type(),
              "logits_p and logits_q must have the same shape and dtype");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t R = x.size(0), V = x.size(1);
  const auto at_ = acc_type(x.scalar_type());
  check_vec(grad, R, "grad", at_, x);
  TORCH_CHECK(stats.dim() == 2 && stats.size(0) == R && stats.size(1) == 6 &&
                  stats.scalar_type() == at_ && stats.device() == x.device(),
              "stats: expected (", R, ", 6) ", at_, " on ", x.device());
  const at::Tensor g = grad.contiguous(), st = stats.contiguous();
  at::Tensor keep;
  at::Tensor dx = at::empty({R, V}, x.options()), dy = at::empty({R, V}, y.options());
  JanusSymKLArgs a{};
  a.x = x.const_data_ptr();
  a.y = y.const_data_ptr();
  a.row_mask = mask_ptr(row_mask, R, x, keep);
  a.grad = g.const_data_ptr();
  a.stats = const_cast<void*>(st.const_data_ptr());  // read-only in the backward
  a.dx = dx.data_ptr();
  a.dy = dy.data_ptr();
  a.rows = R; a.vocab = V; a.stride_x = x.stride(0); a.stride_y = y.stride(0);
  a.inv_temperature = inv_temperature;
  a.dtype = dtype_code(x.scalar_type());
  check(janus_symkl_bwd(&a, c10::cuda::getCurrentCUDAStream()), "symkl_rows_bwd");
  return {dx, dy};
}

std::tuple<at::Tensor, at::Tensor> ce_fwd(const at::Tensor& x_, const at::Tensor& target,
                                          double label_smoothing, int64_t ignore_index) {
  const at::Tensor x = rows_of(x_, "logits");
  TORCH_CHECK(label_smoothing >= 0 && label_smoothing <= 1,
              "label_smoothing: must be in [0, 1], got ", label_smoothing);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t R = x.size(0), V = x.size(1);
  check_vec(target, R, "target", at::kLong, x);
  const at::Tensor t = target.contiguous();
  const auto opt = x.options().dtype(acc_type(x.scalar_type()));
  at::Tensor loss = at::empty({R}, opt), stats = at::empty({R, 2}, opt);
  JanusCEArgs a{};
  a.x = x.const_data_ptr();
  a.target = t.const_data_ptr<int64_t>();
  a.loss = loss.data_ptr();
  a.stats = stats.data_ptr();
  a.rows = R; a.vocab = V; a.stride_x = x.stride(0); a.ignore_index = ignore_index;
  a.label_smoothing = label_smoothing;
  a.dtype = dtype_code(x.scalar_type());
  check(janus_ce_fwd(&a, c10::cuda::getCurrentCUDAStream()), "ce_rows_fwd");
  return {loss, stats};
}

at::Tensor ce_bwd(const at::Tensor& grad, const at::Tensor& x_, const at::Tensor& target,
                  const at::Tensor& stats, double label_smoothing, int64_t ignore_index) {
  const at::Tensor x = rows_of(x_, "logits");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t R = x.size(0), V = x.size(1);
  const auto at_ = acc_type(x.scalar_type());
  check_vec(grad, R, "grad", at_, x);
  check_vec(target, R, "target", at::kLong, x);
  TORCH_CHECK(stats.dim() == 2 && stats.size(0) == R && stats.size(1) == 2 &&
                  stats.scalar_type() == at_ && stats.device() == x.device(),
              "stats: expected (", R, ", 2) ", at_, " on ", x.device());
  const at::Tensor g = grad.contiguous(), st = stats.contiguous(), t = target.contiguous();
  at::Tensor dx = at::empty({R, V}, x.options());
  JanusCEArgs a{};
  a.x = x.const_data_ptr();
  a.target = t.const_data_ptr<int64_t>();
  a.grad = g.const_data_ptr();
  a.stats = const_cast<void*>(st.const_data_ptr());  // read-only in the backward
  a.dx = dx.data_ptr();
  a.rows = R; a.vocab = V; a.stride_x = x.stride(0); a.ignore_index = ignore_index;
  a.label_smoothing = label_smoothing;
  a.dtype = dtype_code(x.scalar_type());
  check(janus_ce_bwd(&a, c10::cuda::getCurrentCUDAStream()), "ce_rows_bwd");
  return dx;
}

// ------------------------------------------------------------------ fused JANUS criterion rows
// The argument checks of csrc/cpu/janus_loss.cpp, minus the value checks of targets and
// ar_kl_rows (a device sync).
void check_logits(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, ": expected a CUDA tensor, got ", t.device());
  TORCH_CHECK(t.dim() == 2, name, ": expected a 2-D (rows, vocab) tensor, got shape ",
              t.sizes());
  dtype_code(t.scalar_type());
  TORCH_CHECK(t.size(1) > 0, name, ": the vocabulary (last) dimension must be non-empty");
  TORCH_CHECK(t.size(0) <= 1 || t.stride(1) == 1 || t.size(1) == 1, name,
              ": the last dimension must be contiguous (stride 1), got strides ", t.strides());
}

struct RowsIn {
  at::Tensor ar_t, m_t, idx, first;
  int64_t N, M, V;
};

// The plan: first[r] = the smallest masked row m with idx[m] == r, or -1; computed on the
// device (out-of-range idx values go to a spare slot N, the kernels give them NaN).
at::Tensor plan_first(const at::Tensor& idx, int64_t N) {
  const int64_t M = idx.size(0);
  const at::Tensor ok = idx.ge(0).logical_and(idx.lt(N));
  const at::Tensor slot = at::where(ok, idx, at::Scalar(N));
  at::Tensor first = at::full({N + 1}, M, idx.options());
  first.scatter_reduce_(0, slot, at::arange(M, idx.options()), "amin", /*include_self=*/true);
  first = first.narrow(0, 0, N);
  return at::where(first.eq(M), at::Scalar(int64_t(-1)), first).contiguous();
}

RowsIn check_rows(const at::Tensor& ar, const at::Tensor& nar, const at::Tensor& aux,
                  const at::Tensor& ar_t, const at::Tensor& m_t, const at::Tensor& idx) {
  check_logits(ar, "ar_logits");
  check_logits(nar, "nar_logits");
  check_logits(aux, "aux_logits");
  janus::check_janus_logits(ar, nar, aux);
  const int64_t N = ar.size(0), M = nar.size(0);
  check_vec(ar_t, N, "target", at::kLong, ar);
  check_vec(m_t, M, "target", at::kLong, ar);
  check_vec(idx, M, "ar_kl_rows", at::kLong, ar);
  const at::Tensor ic = idx.contiguous();
  return RowsIn{ar_t.contiguous(), m_t.contiguous(), ic, plan_first(ic, N), N, M, ar.size(1)};
}

JanusRowsArgs rows_args(const at::Tensor& ar, const at::Tensor& nar, const at::Tensor& aux,
                        const RowsIn& in, double eps, int64_t ignore_index) {
  JanusRowsArgs a{};
  a.ar = ar.const_data_ptr();
  a.nar = nar.const_data_ptr();
  a.aux = aux.const_data_ptr();
  a.ar_target = in.ar_t.const_data_ptr<int64_t>();
  a.masked_target = in.m_t.const_data_ptr<int64_t>();
  a.ar_kl_rows = in.idx.const_data_ptr<int64_t>();
  a.first = in.first.const_data_ptr<int64_t>();
  a.n_ar = in.N; a.n_masked = in.M; a.vocab = in.V;
  a.stride_ar = ar.stride(0); a.stride_nar = nar.stride(0); a.stride_aux = aux.stride(0);
  a.ignore_index = ignore_index;
  a.label_smoothing = eps;
  a.dtype = dtype_code(ar.scalar_type());
  return a;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> rows_fwd(
    const at::Tensor& ar, const at::Tensor& nar, const at::Tensor& aux, const at::Tensor& ar_t,
    const at::Tensor& m_t, const at::Tensor& idx, double eps, int64_t ignore_index) {
  TORCH_CHECK(eps >= 0 && eps <= 1, "label_smoothing: must be in [0, 1], got ", eps);
  const c10::cuda::CUDAGuard guard(ar.device());
  const RowsIn in = check_rows(ar, nar, aux, ar_t, m_t, idx);
  const auto opt = ar.options().dtype(acc_type(ar.scalar_type()));
  at::Tensor ar_loss = at::empty({in.N}, opt), m_loss = at::empty({in.M, 5}, opt);
  at::Tensor ar_st = at::empty({in.N, 2}, opt), m_st = at::empty({in.M, 12}, opt);
  JanusRowsArgs a = rows_args(ar, nar, aux, in, eps, ignore_index);
  a.ar_loss = ar_loss.data_ptr();
  a.masked_loss = m_loss.data_ptr();
  a.ar_stats = ar_st.data_ptr();
  a.masked_stats = m_st.data_ptr();
  check(janus_rows_fwd(&a, c10::cuda::getCurrentCUDAStream()), "janus_rows_fwd");
  return {ar_loss, m_loss, ar_st, m_st};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rows_bwd(
    const at::Tensor& g_ar, const at::Tensor& g_m, const at::Tensor& ar, const at::Tensor& nar,
    const at::Tensor& aux, const at::Tensor& ar_t, const at::Tensor& m_t, const at::Tensor& idx,
    const at::Tensor& ar_st, const at::Tensor& m_st, double eps, int64_t ignore_index) {
  const c10::cuda::CUDAGuard guard(ar.device());
  const RowsIn in = check_rows(ar, nar, aux, ar_t, m_t, idx);
  const auto acc = acc_type(ar.scalar_type());
  check_vec(g_ar, in.N, "grad_ar", acc, ar);
  auto check_2d = [&](const at::Tensor& t, int64_t R, int64_t C, const char* name) {
    TORCH_CHECK(t.dim() == 2 && t.size(0) == R && t.size(1) == C && t.scalar_type() == acc &&
                    t.device() == ar.device(),
                name, ": expected (", R, ", ", C, ") ", acc, " on ", ar.device(), ", got ",
                t.sizes(), " ", t.scalar_type(), " on ", t.device());
  };
  check_2d(g_m, in.M, 5, "grad_masked");
  check_2d(ar_st, in.N, 2, "ar_stats");
  check_2d(m_st, in.M, 12, "masked_stats");
  const at::Tensor ga = g_ar.contiguous(), gm = g_m.contiguous();
  const at::Tensor sa = ar_st.contiguous(), sm = m_st.contiguous();
  at::Tensor d_ar = at::empty({in.N, in.V}, ar.options());
  at::Tensor d_nar = at::empty({in.M, in.V}, ar.options());
  at::Tensor d_aux = at::empty({in.M, in.V}, ar.options());
  JanusRowsArgs a = rows_args(ar, nar, aux, in, eps, ignore_index);
  a.grad_ar = ga.const_data_ptr();
  a.grad_masked = gm.const_data_ptr();
  a.ar_stats = const_cast<void*>(sa.const_data_ptr());  // read-only in the backward
  a.masked_stats = const_cast<void*>(sm.const_data_ptr());
  a.d_ar = d_ar.data_ptr();
  a.d_nar = d_nar.data_ptr();
  a.d_aux = d_aux.data_ptr();
  check(janus_rows_bwd(&a, c10::cuda::getCurrentCUDAStream()), "janus_rows_bwd");
  return {d_ar, d_nar, d_aux};
}

}  // namespace

TORCH_LIBRARY_IMPL(janus, CUDA, m) {
  m.impl("janus_rows_fwd", &rows_fwd);
  m.impl("janus_rows_bwd", &rows_bwd);
  m.impl("symkl_rows_fwd", &symkl_fwd);
  m.impl("symkl_rows_bwd", &symkl_bwd);
  m.impl("ce_rows_fwd", &ce_fwd);
  m.impl("ce_rows_bwd", &ce_bwd);
}
