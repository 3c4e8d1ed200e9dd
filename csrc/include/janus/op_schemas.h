// Schemas of the kernel ops, written once. The `janus` namespace (csrc/ops.cpp) holds them for
// the CUDA kernels and as the public raw ops; each CPU ISA module (csrc/cpu/, compiled once
// per ISA level, see setup.py) defines the same schemas in its own namespace (`janus_avx2`,
// `janus_avx512`, `janus_amx`) so Python can pick the level per call.
#pragma once
#include <torch/library.h>

namespace janus {

inline void define_kernel_ops(torch::Library& m) {
  // Structured-mask flash attention. q (B, H, Lq, d), k/v (B, Hkv, Lk, d), mask_params
  // (B, NUM_FIELDS) int32 (see csrc/include/janus/mask.h), mask_rank (B, Lk) int32 for the
  // permutation kind. rng_seed: int64 tensor of shape (1,) when dropout_p > 0.
  // Score modifiers: s = scale q.k; softcap > 0: s = softcap tanh(s / softcap); rel_bias
  // (H, Lq + Lk - 1) float32: s += rel_bias[h, j - i + Lq - 1]; then the mask and softmax.
  // Returns out (B, H, Lq, d) in q's dtype and lse (B, H, Lq) float32 (-inf for rows that
  // see no key; their output is 0). The backward also returns d_rel_bias (H, Lq + Lk - 1)
  // float32 (the score gradient summed per diagonal), a (0,) tensor without rel_bias.
  m.def("flash_attention_fwd(Tensor q, Tensor k, Tensor v, Tensor mask_params, "
        "Tensor? mask_rank, int q_split, int mask_kind, float scale, float dropout_p, "
        "Tensor? rng_seed, Tensor? rel_bias=None, float softcap=0.0) -> (Tensor, Tensor)");
  m.def("flash_attention_bwd(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, "
        "Tensor lse, Tensor mask_params, Tensor? mask_rank, int q_split, int mask_kind, "
        "float scale, float dropout_p, Tensor? rng_seed, Tensor? rel_bias=None, "
        "float softcap=0.0) -> (Tensor, Tensor, Tensor, Tensor)");
  // Row-wise fused losses (see the math at the top of csrc/cpu/loss.cpp). Logits (R, V) with a
  // unit last stride; loss/stats/grad are float32 (float64 for float64 logits).
  m.def("symkl_rows_fwd(Tensor logits_p, Tensor logits_q, Tensor? row_mask, "
        "float inv_temperature) -> (Tensor loss, Tensor stats)");
  m.def("symkl_rows_bwd(Tensor grad, Tensor logits_p, Tensor logits_q, Tensor stats, "
        "Tensor? row_mask, float inv_temperature) -> (Tensor grad_p, Tensor grad_q)");
  m.def("symkl_rows_bwd_into(Tensor grad, Tensor logits_p, Tensor logits_q, Tensor stats, "
        "Tensor? row_mask, float inv_temperature, Tensor(a!) grad_p_out, "
        "Tensor(b!) grad_q_out) -> ()");
  m.def("ce_rows_fwd(Tensor logits, Tensor target, float label_smoothing, int ignore_index) "
        "-> (Tensor loss, Tensor stats)");
  m.def("ce_rows_bwd(Tensor grad, Tensor logits, Tensor target, Tensor stats, "
        "float label_smoothing, int ignore_index) -> Tensor");
  // The JANUS criterion's row terms (csrc/cpu/janus_loss.cpp): AR CE per AR row; NAR CE, AUX
  // CE and the three symmetric KLs per masked row. Losses/stats/grads are float32 (float64
  // for float64 logits).
  m.def("janus_rows_fwd(Tensor ar_logits, Tensor nar_logits, Tensor aux_logits, "
        "Tensor ar_targets, Tensor masked_targets, Tensor ar_kl_rows, float label_smoothing, "
        "int ignore_index) -> (Tensor ar_loss, Tensor masked_loss, Tensor ar_stats, "
        "Tensor masked_stats)");
  m.def("janus_rows_bwd(Tensor grad_ar, Tensor grad_masked, Tensor ar_logits, "
        "Tensor nar_logits, Tensor aux_logits, Tensor ar_targets, Tensor masked_targets, "
        "Tensor ar_kl_rows, Tensor ar_stats, Tensor masked_stats, float label_smoothing, "
        "int ignore_index) -> (Tensor grad_ar_logits, Tensor grad_nar_logits, "
        "Tensor grad_aux_logits)");
}

}  // namespace janus
