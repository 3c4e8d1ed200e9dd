// CPU attention glue: argument and descriptor validation, output allocation, dtype dispatch
// (attention_fwd.cpp / attention_bwd.cpp) and op registration for this ISA build.
//
// The descriptor is validated here, on the host, in O(B) (plus the side table): the kernels
// index q/k/v and the rank / document table with the descriptor's numbers, so a hand-built
// descriptor with KV_LEN > Lk, KEY_START outside [0, KV_LEN], negative counts, values whose
// window arithmetic overflows int32 or a document table that is not two nondecreasing runs
// must never reach them.
#include <string>

#include "attention_common.h"
#include "isa_library.h"
#include "janus/op_schemas.h"

namespace janus_cpu {
namespace {

void check_common(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const at::Tensor& params, const c10::optional<at::Tensor>& rank,
                  int64_t q_split, int64_t kind) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4,
              "q, k, v: expected 4-D (B, H, L, d) tensors");
  TORCH_CHECK(q.device().is_cpu() && k.device().is_cpu() && v.device().is_cpu(),
              "q, k, v: the cpu attention backend runs on CPU tensors");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(),
              "q, k, v: must share a dtype");
  const auto dt = q.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf,
              "q: the cpu attention backend computes float32, bfloat16 and float16 (got ", dt,
              "); use backend='reference' for float64");
  TORCH_CHECK(k.sizes() == v.sizes(), "k, v: must have the same shape");
  TORCH_CHECK(k.size(0) == q.size(0) && k.size(3) == q.size(3),
              "k: expected (B, Hkv, Lk, d) matching q's B and d");
  TORCH_CHECK(k.size(1) > 0 && q.size(1) % k.size(1) == 0,
              "q, k: q heads must be a multiple of k/v heads");
  TORCH_CHECK(q.size(3) >= 1 && q.size(3) <= 256, "q: head_dim must be in [1, 256], got ",
              q.size(3));
  TORCH_CHECK(q.size(2) < (int64_t(1) << 30) && k.size(2) < (int64_t(1) << 30),
              "q, k: sequence lengths must be below 2^30");
  TORCH_CHECK(params.dtype() == at::kInt && params.dim() == 2 &&
                  params.size(0) == q.size(0) && params.size(1) == janus::NUM_FIELDS,
              "mask_params: expected int32 (B, ", janus::NUM_FIELDS, "), got ", params.sizes(),
              " ", params.scalar_type());
  TORCH_CHECK(params.device().is_cpu(), "mask_params: must be a CPU tensor for CPU attention");
  TORCH_CHECK(q_split >= 0 && q_split <= q.size(2), "q_split: must be in [0, Lq=", q.size(2),
              "], got ", q_split);
  TORCH_CHECK(janus::kind_valid((int)kind),
              "mask_kind: must be 0 (window), 1 (permutation) or 2 (documents), got ", kind);
  const int64_t width = janus::side_table_width((int)kind, q.size(2), k.size(2));
  if (width > 0)
    TORCH_CHECK(rank.has_value() && rank->dtype() == at::kInt && rank->dim() == 2 &&
                    rank->size(0) == q.size(0) && rank->size(1) == width &&
                    rank->device().is_cpu(),
                "mask_rank: ", kind == janus::KIND_PERMUTATION
                    ? "the permutation kind needs an int32 CPU tensor (B, Lk)"
                    : "the documents kind needs an int32 CPU tensor (B, Lq + Lk)",
                " = (", q.size(0), ", ", width, ")");
}

// Every sample's fields against the tensors they index (see janus/mask.h for the predicate).
// The window arithmetic hi = max(r + OFF, HMIN), lo = hi - WIDTH runs in int32 for rows up to
// Lq plus one tile, so OFF / HMIN / WIDTH must keep it in range.
void check_descriptor(const int32_t* p, const int32_t* rank, int64_t B, int64_t Lq, int64_t Lk,
                      int64_t q_split, int64_t kind) {
  constexpr int64_t kBig = int64_t(1) << 30;   // |values| allowed in the window arithmetic
  const int64_t stream_len[2] = {q_split, Lq - q_split};
  for (int64_t b = 0; b < B; ++b) {
    const int32_t* f = p + b * janus::NUM_FIELDS;
    auto bad = [&](const char* what, int64_t value, const std::string& expected) {
      TORCH_CHECK(false, "mask_params: sample ", b, ": ", what, " = ", value, " must be ",
                  expected);
    };
    if (f[janus::KV_LEN] < 0 || f[janus::KV_LEN] > Lk)
      bad("KV_LEN", f[janus::KV_LEN], "in [0, Lk=" + std::to_string(Lk) + "]");
    if (f[janus::PREFIX] < 0) bad("PREFIX", f[janus::PREFIX], ">= 0");
    if (f[janus::KEY_START] < 0 || f[janus::KEY_START] > f[janus::KV_LEN])
      bad("KEY_START", f[janus::KEY_START],
          "in [0, KV_LEN=" + std::to_string(f[janus::KV_LEN]) + "] (real keys [KEY_START, KV_LEN))");
    for (int s = 0; s < 2; ++s) {
      const int64_t rows = f[janus::ROWS0 + 4 * s], off = f[janus::OFF0 + 4 * s];
      const int64_t hmin = f[janus::HMIN0 + 4 * s], width = f[janus::WIDTH0 + 4 * s];
      const char* names[4] = {s ? "ROWS1" : "ROWS0", s ? "OFF1" : "OFF0", s ? "HMIN1" : "HMIN0",
                              s ? "WIDTH1" : "WIDTH0"};
      if (rows < 0 || rows > stream_len[s])
        bad(names[0], rows, "in [0, " + std::to_string(stream_len[s]) + "] (the stream's rows)");
      if (kind == janus::KIND_PERMUTATION && rows > Lk)   // rank is read at the row index
        bad(names[0], rows, "<= Lk=" + std::to_string(Lk) + " for the permutation kind");
      if (off < -kBig || off > kBig) bad(names[1], off, "in [-2^30, 2^30]");
      if (hmin < -kBig || hmin > kBig) bad(names[2], hmin, "in [-2^30, 2^30]");
      if (width < 0 || width > kBig) bad(names[3], width, "in [0, 2^30]");
    }
    if (kind == janus::KIND_PERMUTATION) {
      // the entries the kernels read: keys j < KV_LEN and local rows r < ROWS[s]
      const int64_t read = std::max<int64_t>(
          f[janus::KV_LEN], std::max(f[janus::ROWS0], f[janus::ROWS1]));
      const int32_t* rb = rank + b * Lk;
      for (int64_t j = 0; j < read; ++j)
        TORCH_CHECK(rb[j] >= -kBig && rb[j] < kBig, "mask_rank: sample ", b, ", entry ", j,
                    ": rank = ", rb[j], " must be in [-2^30, 2^30) (rank + OFF stays in int32)");
    }
    if (kind == janus::KIND_DOCUMENTS) {
      // two nondecreasing runs: row documents [0, Lq), key documents [Lq, Lq + Lk)
      const int32_t* db = rank + b * (Lq + Lk);
      for (int64_t c = 0; c < Lq + Lk; ++c) {
        TORCH_CHECK(db[c] >= -kBig && db[c] < kBig, "mask_rank: sample ", b, ", column ", c,
                    ": document id ", db[c], " must be in [-2^30, 2^30)");
        TORCH_CHECK(c == 0 || c == Lq || db[c] >= db[c - 1], "mask_rank: sample ", b,
                    ", column ", c, ": document id ", db[c], " < ", db[c - 1],
                    " before it; the row documents (columns [0, Lq=", Lq,
                    ")) and the key documents (the rest) must each be nondecreasing");
      }
    }
  }
}

// Contiguous copies of the descriptor tensors (kept alive), validated, and the raw view the
// kernels read.
struct MaskTensors {
  at::Tensor params, rank;
  MaskArgs args;
  MaskTensors(const at::Tensor& p, const c10::optional<at::Tensor>& r, int64_t q_split,
              int64_t kind, int64_t Lq, int64_t Lk)
      : params(p.contiguous()), rank(r && kind != janus::KIND_WINDOW ? r->contiguous()
                                                                     : at::Tensor()) {
    const int32_t* rp = rank.defined() ? rank.data_ptr<int32_t>() : nullptr;
    check_descriptor(params.data_ptr<int32_t>(), rp, params.size(0), Lq, Lk, q_split, kind);
    args = MaskArgs{params.data_ptr<int32_t>(), rp, rank.defined() ? rank.size(1) : 0,
                    (int)q_split, (int)kind, (int)Lq, (int)Lk};
  }
};

// The score modifiers' tensors, validated (kept alive), and the raw view the kernels read.
struct ScoreModTensors {
  at::Tensor rel_bias, d_rel_bias;
  ScoreMods args;
  ScoreModTensors(const c10::optional<at::Tensor>& rb, double softcap, const at::Tensor& q,
                  int64_t Lk, bool backward) {
    TORCH_CHECK(std::isfinite(softcap) && softcap >= 0,
                "softcap: must be finite and >= 0 (0 = off), got ", softcap);
    args.softcap = (float)softcap;
    const int64_t H = q.size(1), rel_len = q.size(2) + Lk - 1;
    if (rb.has_value() && rb->defined()) {
      TORCH_CHECK(rb->scalar_type() == at::kFloat && rb->device().is_cpu() && rb->dim() == 2 &&
                      rb->size(0) == H && rb->size(1) == rel_len,
                  "rel_bias: expected a float32 CPU tensor (H=", H, ", Lq + Lk - 1=", rel_len,
                  "), got ", rb->scalar_type(), " ", rb->sizes());
      rel_bias = rb->contiguous();
      args.rel_bias = rel_bias.data_ptr<float>();
      args.rel_len = rel_len;
      if (backward) {
        d_rel_bias = at::zeros({H, rel_len}, q.options().dtype(at::kFloat));
        args.d_rel_bias = d_rel_bias.data_ptr<float>();
      }
    }
    if (backward && !d_rel_bias.defined())
      d_rel_bias = at::empty({0}, q.options().dtype(at::kFloat));
    TORCH_CHECK(!args.on(), "softcap / rel_bias: not implemented by this build's CPU kernels");
  }
};

// brgemm needs unit stride in the last dim; everything else is handled through strides.
at::Tensor last_dim_contiguous(const at::Tensor& t) {
  return t.stride(-1) == 1 ? t : t.contiguous();
}

// kNativeBf16: this namespace runs bf16 tiles on AMX (janus_amx); otherwise they are widened.
template <bool kNativeBf16>
std::tuple<at::Tensor, at::Tensor> fwd(const at::Tensor& q_, const at::Tensor& k_,
                                       const at::Tensor& v_, const at::Tensor& params,
                                       const c10::optional<at::Tensor>& rank, int64_t q_split,
                                       int64_t kind, double scale, double dropout_p,
                                       const c10::optional<at::Tensor>& seed,
                                       const c10::optional<at::Tensor>& rel_bias,
                                       double softcap) {
  check_common(q_, k_, v_, params, rank, q_split, kind);
  TORCH_CHECK(std::isfinite(scale) && scale > 0, "scale: must be finite and positive, got ",
              scale);
  const MaskTensors mt(params, rank, q_split, kind, q_.size(2), k_.size(2));
  const ScoreModTensors mods(rel_bias, softcap, q_, k_.size(2), /*backward=*/false);
  const Dropout drop = make_dropout(dropout_p, seed);
  const bool native_bf16 = kNativeBf16 && q_.scalar_type() == at::kBFloat16 && q_.size(3) % 2 == 0;
  const at::Tensor q = last_dim_contiguous(q_), k = last_dim_contiguous(k_),
                   v = last_dim_contiguous(v_);
  // every row is written by the kernel (computed, or zeroed as uncovered); large outputs
  // come from the pool of mapped blocks (first-touch page faults cost as much as the kernel
  // at IWSLT-sized batches)
  at::Tensor out = pooled_empty(q.sizes(), q.options(), kPoolMinBytes);   // contiguous
  at::Tensor lse = at::empty({q.size(0), q.size(1), q.size(2)}, q.options().dtype(at::kFloat));
  if (q.numel() > 0 && k.size(2) > 0) {
    attention_fwd(q, k, v, mt.args, (float)scale, drop, native_bf16, out, lse);
  } else {
    out.zero_();
    lse.fill_(-INFINITY);
  }
  return {out, lse};
}

template <bool kNativeBf16>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bwd(
    const at::Tensor& dout_, const at::Tensor& q_, const at::Tensor& k_, const at::Tensor& v_,
    const at::Tensor& out_, const at::Tensor& lse_, const at::Tensor& params,
    const c10::optional<at::Tensor>& rank, int64_t q_split, int64_t kind, double scale,
    double dropout_p, const c10::optional<at::Tensor>& seed,
    const c10::optional<at::Tensor>& rel_bias, double softcap) {
  check_common(q_, k_, v_, params, rank, q_split, kind);
  TORCH_CHECK(std::isfinite(scale) && scale > 0, "scale: must be finite and positive, got ",
              scale);
  TORCH_CHECK(dout_.sizes() == q_.sizes() && out_.sizes() == q_.sizes(),
              "grad_out, out: must have q's shape");
  TORCH_CHECK(dout_.scalar_type() == q_.scalar_type() && out_.scalar_type() == q_.scalar_type(),
              "grad_out, out: must have q's dtype");
  TORCH_CHECK(dout_.device().is_cpu() && out_.device().is_cpu() && lse_.device().is_cpu(),
              "grad_out, out, lse: must be CPU tensors");
  TORCH_CHECK(lse_.dim() == 3 && lse_.size(0) == q_.size(0) && lse_.size(1) == q_.size(1) &&
                  lse_.size(2) == q_.size(2) && lse_.scalar_type() == at::kFloat,
              "lse: expected float32 (B, H, Lq)");
  const MaskTensors mt(params, rank, q_split, kind, q_.size(2), k_.size(2));
  const ScoreModTensors mods(rel_bias, softcap, q_, k_.size(2), /*backward=*/true);
  const Dropout drop = make_dropout(dropout_p, seed);
  const bool native_bf16 = kNativeBf16 && q_.scalar_type() == at::kBFloat16 && q_.size(3) % 2 == 0;
  const at::Tensor q = last_dim_contiguous(q_), k = last_dim_contiguous(k_),
                   v = last_dim_contiguous(v_), o = last_dim_contiguous(out_),
                   g = last_dim_contiguous(dout_);
  const at::Tensor lse = lse_.contiguous();
  // written (or zeroed) per work item, in parallel, by the thread that owns them; always
  // contiguous, whatever the inputs' strides (the ops' fakes promise that)
  const auto opt = q.options();
  at::Tensor dq = pooled_empty(q.sizes(), opt, kPoolMinBytes);
  at::Tensor dk = pooled_empty(k.sizes(), opt, kPoolMinBytes);
  at::Tensor dv = pooled_empty(v.sizes(), opt, kPoolMinBytes);
  if (q.numel() > 0 && k.size(2) > 0) {
    attention_bwd(g, q, k, v, o, lse, mt.args, (float)scale, drop, native_bf16, dq, dk, dv);
  } else {
    dq.zero_(); dk.zero_(); dv.zero_();
  }
  return {dq, dk, dv, mods.d_rel_bias};
}

void register_attention(torch::Library& m) {
  m.impl("flash_attention_fwd", &fwd<false>);
  m.impl("flash_attention_bwd", &bwd<false>);
}

void register_attention_amx(torch::Library& m) {
  m.impl("flash_attention_fwd", &fwd<true>);
  m.impl("flash_attention_bwd", &bwd<true>);
}

std::string isa_info() {
#if defined(CPU_CAPABILITY_AVX512)
  return "avx512";
#elif defined(CPU_CAPABILITY_AVX2)
  return "avx2";
#else
  return "default";
#endif
}

// The op schemas of this build's namespace(s), and the module-level helpers.
void define_ops(torch::Library& m) {
  janus::define_kernel_ops(m);
  // unmaps the blocks cached by the output pool (output_pool.h); returns their bytes
  m.def("pool_clear() -> int", +[]() -> int64_t { return int64_t(OutputPool::get().clear()); });
  m.def("isa_info() -> str", &isa_info);
}

}  // namespace
}  // namespace janus_cpu

JANUS_LIBRARY_(JANUS_ISA_NS, m) { janus_cpu::define_ops(m); }
#if defined(JANUS_ISA_WITH_AMX)
TORCH_LIBRARY(janus_amx, m) { janus_cpu::define_ops(m); }
#endif
JANUS_CPU_KERNELS(janus_cpu::register_attention, janus_cpu::register_attention_amx)
