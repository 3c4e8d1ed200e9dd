// Torch glue of the CUDA attention kernels: implements janus::flash_attention_fwd / _bwd (schemas
// in csrc/ops.cpp) for CUDA tensors on the current stream of the inputs' device, by calling the
// torch-free launchers of attention_fwd.cu / attention_bwd.cu. Compiled only in CUDA builds
// (setup.py globs csrc/cuda/*.cpp into the CUDAExtension).
//
// Layout contract of the kernels (attention_launch.h): last dimension contiguous, batch / head /
// row strides multiples of 8 elements, data 16-byte aligned. Other layouts are copied into a
// contiguous tensor here; inputs are never modified.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>
#include <optional>
#include <tuple>

#include "attention_launch.h"
#include "janus/mask.h"

namespace {

using at::Tensor;

constexpr int kMaxHeadDim = 128;

int dtype_code(const Tensor& t) {
  return t.scalar_type() == at::kHalf ? JANUS_DTYPE_F16 : JANUS_DTYPE_BF16;
}

// Element strides of dims 0..2 as the kernels read them (0 for size-1 dims, whose stride is
// meaningless), after copying t if its layout does not meet the kernels' contract.
Tensor kernel_layout(const Tensor& t, int64_t (&stride)[3]) {
  auto fill = [&stride](const Tensor& x) {
    for (int d = 0; d < 3; ++d) stride[d] = x.size(d) == 1 ? 0 : x.stride(d);
  };
  fill(t);
  bool ok = t.stride(3) == 1 || t.size(3) == 1;
  for (int d = 0; d < 3; ++d) ok = ok && stride[d] % 8 == 0;
  ok = ok && reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
  if (ok) return t;
  Tensor c = t.contiguous();
  if (reinterpret_cast<uintptr_t>(c.data_ptr()) % 16 != 0) c = c.clone();   // fresh allocation
  fill(c);
  return c;
}

void check_tensor(const Tensor& t, const char* name, const at::Device& dev) {
  TORCH_CHECK(t.is_cuda(), name, ": expected a CUDA tensor, got one on ", t.device());
  TORCH_CHECK(t.device() == dev, name, ": expected it on ", dev, " (like q), got ", t.device());
}

struct MaskInputs {
  Tensor params, rank;
  int64_t rank_stride = 0;
};

MaskInputs check_mask(const Tensor& params, const std::optional<Tensor>& rank, int64_t q_split,
                      int64_t kind, int64_t B, int64_t Lq, int64_t Lk, const at::Device& dev) {
  check_tensor(params, "mask_params", dev);
  TORCH_CHECK(params.scalar_type() == at::kInt && params.dim() == 2 && params.size(0) == B &&
                  params.size(1) == janus::NUM_FIELDS,
              "mask_params: expected int32 (B=", B, ", ", int(janus::NUM_FIELDS), "), got ",
              params.scalar_type(), " ", params.sizes());
  TORCH_CHECK(q_split >= 0 && q_split <= Lq, "q_split: must be in [0, Lq=", Lq, "], got ",
              q_split);
  TORCH_CHECK(janus::kind_valid((int)kind),
              "mask_kind: must be 0 (window), 1 (permutation) or 2 (documents), got ", kind);
  MaskInputs m;
  m.params = params.contiguous();
  if (kind != janus::KIND_WINDOW) {
    const bool docs = kind == janus::KIND_DOCUMENTS;
    TORCH_CHECK(rank.has_value() && rank->defined(), "mask_rank: required for mask_kind ", kind);
    check_tensor(*rank, "mask_rank", dev);
    // documents: (B, Lq + Lk) exactly (the key documents start at column Lq)
    TORCH_CHECK(rank->scalar_type() == at::kInt && rank->dim() == 2 && rank->size(0) == B &&
                    (docs ? rank->size(1) == Lq + Lk : rank->size(1) >= Lk),
                "mask_rank: expected int32 (B=", B, docs ? ", Lq + Lk=" : ", Lk=",
                docs ? Lq + Lk : Lk, "), got ", rank->scalar_type(), " ", rank->sizes());
    m.rank = rank->stride(1) == 1 ? *rank : rank->contiguous();
    m.rank_stride = m.rank.stride(0);
  }
  return m;
}

// Score modifiers (op_schemas.h) are not implemented by the CUDA kernels yet: the backend
// contract (janus_kernels/backends/cuda.py) does not declare them, so dispatch never sends them.
void check_score_mods(const std::optional<Tensor>& rel_bias, double softcap) {
  TORCH_CHECK(!(rel_bias.has_value() && rel_bias->defined()) && softcap == 0.0,
              "softcap / rel_bias: not implemented by the CUDA kernels");
}

uint64_t dropout_seed(double p, const std::optional<Tensor>& seed) {
  TORCH_CHECK(p >= 0.0 && p < 1.0, "dropout_p: must be in [0, 1), got ", p);
  if (p == 0.0) return 0;
  TORCH_CHECK(seed.has_value() && seed->defined() && seed->numel() == 1 &&
                  seed->scalar_type() == at::kLong,
              "rng_seed: dropout_p > 0 needs an int64 tensor with one element");
  return static_cast<uint64_t>(seed->item<int64_t>());   // a CPU tensor: no device sync
}

// Shapes and dtypes common to forward and backward; returns (B, H, Hkv, Lq, Lk, d).
std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t> check_qkv(const Tensor& q,
                                                                           const Tensor& k,
                                                                           const Tensor& v) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4,
              "q, k, v: expected 4-D tensors (B, heads, length, head_dim), got ", q.sizes(), ", ",
              k.sizes(), ", ", v.sizes());
  check_tensor(q, "q", q.device());
  check_tensor(k, "k", q.device());
  check_tensor(v, "v", q.device());
  TORCH_CHECK(q.scalar_type() == at::kHalf || q.scalar_type() == at::kBFloat16,
              "q: the CUDA kernel supports float16 and bfloat16, got ", q.scalar_type(),
              " (use backend='triton' or 'reference' for float32)");
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
              "q, k, v: must share a dtype, got ", q.scalar_type(), ", ", k.scalar_type(), ", ",
              v.scalar_type());
  TORCH_CHECK(k.sizes() == v.sizes(), "k, v: must have the same shape, got ", k.sizes(), " and ",
              v.sizes());
  const int64_t B = q.size(0), H = q.size(1), Lq = q.size(2), d = q.size(3);
  const int64_t Hkv = k.size(1), Lk = k.size(2);
  TORCH_CHECK(k.size(0) == B && k.size(3) == d, "k: expected (B=", B, ", Hkv, Lk, d=", d,
              "), got ", k.sizes());
  TORCH_CHECK(Hkv > 0 && H % Hkv == 0, "k: the heads of q (", H,
              ") must be a multiple of the heads of k/v (", Hkv, ")");
  TORCH_CHECK(d >= 8 && d <= kMaxHeadDim && d % 8 == 0,
              "q: head_dim must be a multiple of 8 in [8, ", kMaxHeadDim,
              "] for the CUDA kernel, got ", d);
  // one-dimensional grids of (batch * heads) x (64-row or 64-key tiles, +1 for two streams)
  constexpr int64_t kMaxBlocks = std::numeric_limits<int32_t>::max();
  TORCH_CHECK(B * H * ((Lq + 63) / 64 + 1) <= kMaxBlocks && B * Hkv * ((Lk + 63) / 64) <= kMaxBlocks,
              "q: batch x heads x length tiles exceeds the CUDA grid limit 2^31 - 1: split the "
              "batch");
  TORCH_CHECK(Lq < std::numeric_limits<int32_t>::max() &&
                  Lk < std::numeric_limits<int32_t>::max(),
              "q, k: sequence lengths must fit in int32");
  return {B, H, Hkv, Lq, Lk, d};
}

std::tuple<Tensor, Tensor> flash_attention_fwd_cuda(const Tensor& q_, const Tensor& k_,
                                                    const Tensor& v_, const Tensor& mask_params,
                                                    const std::optional<Tensor>& mask_rank,
                                                    int64_t q_split, int64_t mask_kind,
                                                    double scale, double dropout_p,
                                                    const std::optional<Tensor>& rng_seed,
                                                    const std::optional<Tensor>& rel_bias,
                                                    double softcap) {
  const auto [B, H, Hkv, Lq, Lk, d] = check_qkv(q_, k_, v_);
  check_score_mods(rel_bias, softcap);
  const c10::cuda::CUDAGuard guard(q_.device());
  const MaskInputs m =
      check_mask(mask_params, mask_rank, q_split, mask_kind, B, Lq, Lk, q_.device());
  const uint64_t seed = dropout_seed(dropout_p, rng_seed);

  JanusAttnFwdArgs a{};
  const Tensor q = kernel_layout(q_, a.q_stride);
  const Tensor k = kernel_layout(k_, a.k_stride);
  const Tensor v = kernel_layout(v_, a.v_stride);
  Tensor out = at::empty({B, H, Lq, d}, q_.options());
  Tensor lse = at::empty({B, H, Lq}, q_.options().dtype(at::kFloat));
  if (B == 0 || Lq == 0) return {out, lse};
  const Tensor o_view = kernel_layout(out, a.o_stride);   // fresh and contiguous: no copy
  a.q = q.data_ptr();
  a.k = k.data_ptr();
  a.v = v.data_ptr();
  a.out = o_view.data_ptr();
  a.lse = lse.data_ptr<float>();
  a.mask_params = m.params.data_ptr<int32_t>();
  a.mask_rank = m.rank.defined() ? m.rank.data_ptr<int32_t>() : nullptr;
  a.rank_stride = m.rank_stride;
  a.B = (int32_t)B; a.H = (int32_t)H; a.Hkv = (int32_t)Hkv;
  a.Lq = (int32_t)Lq; a.Lk = (int32_t)Lk; a.head_dim = (int32_t)d;
  a.q_split = (int32_t)q_split; a.mask_kind = (int32_t)mask_kind; a.dtype = dtype_code(q);
  a.scale = (float)scale; a.dropout_p = (float)dropout_p; a.seed = seed;
  C10_CUDA_CHECK(
      janus_cuda_attention_fwd(&a, c10::cuda::getCurrentCUDAStream(q_.device().index())));
  return {out, lse};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> flash_attention_bwd_cuda(
    const Tensor& dout_, const Tensor& q_, const Tensor& k_, const Tensor& v_, const Tensor& out_,
    const Tensor& lse_, const Tensor& mask_params, const std::optional<Tensor>& mask_rank,
    int64_t q_split, int64_t mask_kind, double scale, double dropout_p,
    const std::optional<Tensor>& rng_seed, const std::optional<Tensor>& rel_bias,
    double softcap) {
  const auto [B, H, Hkv, Lq, Lk, d] = check_qkv(q_, k_, v_);
  check_score_mods(rel_bias, softcap);
  const Tensor d_rel_bias = at::empty({0}, q_.options().dtype(at::kFloat));
  const c10::cuda::CUDAGuard guard(q_.device());
  check_tensor(dout_, "grad_out", q_.device());
  check_tensor(out_, "out", q_.device());
  check_tensor(lse_, "lse", q_.device());
  TORCH_CHECK(dout_.sizes() == q_.sizes() && dout_.scalar_type() == q_.scalar_type(),
              "grad_out: expected ", q_.scalar_type(), " ", q_.sizes(), ", got ",
              dout_.scalar_type(), " ", dout_.sizes());
  TORCH_CHECK(out_.sizes() == q_.sizes() && out_.scalar_type() == q_.scalar_type(),
              "out: expected ", q_.scalar_type(), " ", q_.sizes(), ", got ", out_.scalar_type(),
              " ", out_.sizes());
  TORCH_CHECK(lse_.scalar_type() == at::kFloat && lse_.dim() == 3 && lse_.size(0) == B &&
                  lse_.size(1) == H && lse_.size(2) == Lq,
              "lse: expected float32 (B, H, Lq) = (", B, ", ", H, ", ", Lq, "), got ",
              lse_.scalar_type(), " ", lse_.sizes());
  const MaskInputs m =
      check_mask(mask_params, mask_rank, q_split, mask_kind, B, Lq, Lk, q_.device());
  const uint64_t seed = dropout_seed(dropout_p, rng_seed);

  JanusAttnBwdArgs a{};
  const Tensor dout = kernel_layout(dout_, a.do_stride);
  const Tensor q = kernel_layout(q_, a.q_stride);
  const Tensor k = kernel_layout(k_, a.k_stride);
  const Tensor v = kernel_layout(v_, a.v_stride);
  const Tensor out = kernel_layout(out_, a.o_stride);
  const Tensor lse = lse_.contiguous();
  Tensor dq = at::empty({B, H, Lq, d}, q_.options());
  Tensor dk = at::empty({B, Hkv, Lk, d}, q_.options());
  Tensor dv = at::empty({B, Hkv, Lk, d}, q_.options());
  if (B == 0) return {dq, dk, dv, d_rel_bias};
  const Tensor dq_v = kernel_layout(dq, a.dq_stride);
  const Tensor dk_v = kernel_layout(dk, a.dk_stride);
  const Tensor dv_v = kernel_layout(dv, a.dv_stride);
  Tensor delta = at::empty({B, H, Lq}, q_.options().dtype(at::kFloat));
  a.dout = dout.data_ptr(); a.q = q.data_ptr(); a.k = k.data_ptr(); a.v = v.data_ptr();
  a.out = out.data_ptr(); a.lse = lse.data_ptr<float>();
  a.dq = dq_v.data_ptr(); a.dk = dk_v.data_ptr(); a.dv = dv_v.data_ptr();
  a.delta = delta.data_ptr<float>();
  a.mask_params = m.params.data_ptr<int32_t>();
  a.mask_rank = m.rank.defined() ? m.rank.data_ptr<int32_t>() : nullptr;
  a.rank_stride = m.rank_stride;
  a.B = (int32_t)B; a.H = (int32_t)H; a.Hkv = (int32_t)Hkv;
  a.Lq = (int32_t)Lq; a.Lk = (int32_t)Lk; a.head_dim = (int32_t)d;
  a.q_split = (int32_t)q_split; a.mask_kind = (int32_t)mask_kind; a.dtype = dtype_code(q);
  a.scale = (float)scale; a.dropout_p = (float)dropout_p; a.seed = seed;
  C10_CUDA_CHECK(
      janus_cuda_attention_bwd(&a, c10::cuda::getCurrentCUDAStream(q_.device().index())));
  return {dq, dk, dv, d_rel_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(janus, CUDA, m) {
  m.impl("flash_attention_fwd", &flash_attention_fwd_cuda);
  m.impl("flash_attention_bwd", &flash_attention_bwd_cuda);
}
