// The C++ mask algebra exposed for tests: dense materialization and tile classes computed
// by csrc/include/janus/mask.h, compared in tests against janus_kernels/masks.py.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "janus/mask.h"

namespace {

void check_params(const at::Tensor& params, const c10::optional<at::Tensor>& rank, int64_t kind,
                  int64_t q_len, int64_t kv_len) {
  TORCH_CHECK(params.dtype() == at::kInt && params.dim() == 2 && params.size(1) == janus::NUM_FIELDS,
              "mask_params: expected int32 (B, ", janus::NUM_FIELDS, "), got ", params.sizes());
  TORCH_CHECK(janus::kind_valid((int)kind), "mask_kind: expected 0, 1 or 2, got ", kind);
  const int64_t width = janus::side_table_width((int)kind, q_len, kv_len);
  TORCH_CHECK(width == 0 || (rank && rank->dtype() == at::kInt && rank->dim() == 2 &&
                             rank->size(0) == params.size(0) && rank->size(1) == width),
              "mask_rank: mask_kind ", kind, " needs an int32 (B, ", width, ") side table");
}

at::Tensor mask_materialize(const at::Tensor& params_, const c10::optional<at::Tensor>& rank_,
                            int64_t q_split, int64_t kind, int64_t q_len, int64_t kv_len) {
  check_params(params_, rank_, kind, q_len, kv_len);
  const at::Tensor params = params_.contiguous();
  const at::Tensor rank = rank_ && kind != janus::KIND_WINDOW ? rank_->contiguous() : at::Tensor();
  const int64_t B = params.size(0);
  at::Tensor out = at::zeros({B, q_len, kv_len}, params.options().dtype(at::kBool));
  bool* o = out.data_ptr<bool>();
  for (int64_t b = 0; b < B; ++b) {
    const auto m = janus::sample_mask(params.data_ptr<int32_t>(),
                                      rank.defined() ? rank.data_ptr<int32_t>() : nullptr,
                                      rank.defined() ? rank.size(1) : 0, (int)b, (int)q_split,
                                      (int)kind, (int)q_len, (int)kv_len);
    for (int64_t i = 0; i < q_len; ++i)
      for (int64_t j = 0; j < kv_len; ++j) o[(b * q_len + i) * kv_len + j] = m.allowed(i, j);
  }
  return out;
}

at::Tensor mask_tile_class(const at::Tensor& params_, int64_t q_split, int64_t q_len,
                           int64_t kv_len, int64_t block_m, int64_t block_n,
                           const c10::optional<at::Tensor>& rank_, int64_t kind) {
  check_params(params_, rank_, kind, q_len, kv_len);
  TORCH_CHECK(block_m > 0 && block_n > 0, "block_m, block_n: must be positive");
  const at::Tensor params = params_.contiguous();
  const at::Tensor rank = rank_ && kind != janus::KIND_WINDOW ? rank_->contiguous() : at::Tensor();
  const int64_t B = params.size(0);
  const int64_t nm = (q_len + block_m - 1) / block_m, nn = (kv_len + block_n - 1) / block_n;
  at::Tensor out = at::empty({B, nm, nn}, params.options().dtype(at::kChar));
  int8_t* o = out.data_ptr<int8_t>();
  for (int64_t b = 0; b < B; ++b) {
    const auto m = janus::sample_mask(params.data_ptr<int32_t>(),
                                      rank.defined() ? rank.data_ptr<int32_t>() : nullptr,
                                      rank.defined() ? rank.size(1) : 0, (int)b, (int)q_split,
                                      (int)kind, (int)q_len, (int)kv_len);
    for (int64_t tm = 0; tm < nm; ++tm)
      for (int64_t tn = 0; tn < nn; ++tn) {
        const int i0 = tm * block_m, i1 = std::min(q_len, (tm + 1) * block_m) - 1;
        const int j0 = tn * block_n, j1 = std::min(kv_len, (tn + 1) * block_n) - 1;
        o[(b * nm + tm) * nn + tn] = (int8_t)m.tile_class(i0, i1, j0, j1);
      }
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(janus, m) {
  m.def("mask_materialize(Tensor mask_params, Tensor? mask_rank, int q_split, int mask_kind, "
        "int q_len, int kv_len) -> Tensor", &mask_materialize);
  m.def("mask_tile_class(Tensor mask_params, int q_split, int q_len, int kv_len, int block_m, "
        "int block_n, Tensor? mask_rank=None, int mask_kind=0) -> Tensor", &mask_tile_class);
}
