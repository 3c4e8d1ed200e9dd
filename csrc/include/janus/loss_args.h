// Host-side argument checks of the fused JANUS criterion rows op shared by its CPU driver
// (csrc/cpu/janus_loss.cpp) and its CUDA glue (csrc/cuda/loss_glue.cpp): the relations
// between the three logit matrices. Each backend checks device/layout of every tensor itself.
#pragma once
#include <ATen/ATen.h>

namespace janus {

inline void check_janus_logits(const at::Tensor& ar, const at::Tensor& nar,
                               const at::Tensor& aux) {
  TORCH_CHECK(nar.sizes() == aux.sizes(), "nar_logits and aux_logits must have the same shape, "
              "got ", nar.sizes(), " and ", aux.sizes());
  TORCH_CHECK(ar.size(1) == nar.size(1), "ar_logits and nar_logits must have the same "
              "vocabulary size, got ", ar.size(1), " and ", nar.size(1));
  TORCH_CHECK(ar.scalar_type() == nar.scalar_type() && ar.scalar_type() == aux.scalar_type(),
              "ar_logits, nar_logits and aux_logits must share a dtype, got ", ar.scalar_type(),
              ", ", nar.scalar_type(), ", ", aux.scalar_type());
  TORCH_CHECK(ar.device() == nar.device() && ar.device() == aux.device(),
              "ar_logits, nar_logits and aux_logits must be on one device");
}

}  // namespace janus
