// Torch glue for the CUDA loss kernels (loss.cu): CUDA implementations of the janus::symkl_rows_*
// and janus::ce_rows_* ops whose schemas are in csrc/cpu/loss.cpp. Compiled only in a CUDA
// build (setup.py, JANUS_WITH_CUDA). Out-of-range CE targets give a NaN loss here (checking
// them on the host would need a device sync); the CPU implementation raises instead.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cmath>

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

}  // namespace

TORCH_LIBRARY_IMPL(janus, CUDA, m) {
  m.impl("symkl_rows_fwd", &symkl_fwd);
  m.impl("symkl_rows_bwd", &symkl_bwd);
  m.impl("ce_rows_fwd", &ce_fwd);
  m.impl("ce_rows_bwd", &ce_bwd);
}
