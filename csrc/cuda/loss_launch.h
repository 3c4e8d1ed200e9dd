// Raw-pointer entry points of the CUDA loss kernels (loss.cu): no torch types, so the torch glue
// (loss_glue.cpp) and any other host code call the same functions. Same math, saved statistics
// and special-value rules as csrc/cpu/loss.cpp.
//
// Logits are (rows, vocab) with a unit column stride and a row stride in elements. loss (rows),
// stats (rows, 6) for the KL / (rows, 2) for CE and grad (rows) are contiguous in the
// accumulation type (float, double for float64 logits); gradients dx/dy are contiguous
// (rows, vocab) in the logits' dtype. row_mask: nullptr or one byte per row (0 = skip).
#pragma once
#include <stdint.h>

#include <cuda_runtime_api.h>  // cudaError_t, cudaStream_t

#ifdef __cplusplus
extern "C" {
#endif

enum { JANUS_LOSS_F32 = 0, JANUS_LOSS_F16 = 1, JANUS_LOSS_BF16 = 2, JANUS_LOSS_F64 = 3 };

typedef struct JanusSymKLArgs {
  const void* x;
  const void* y;
  const uint8_t* row_mask;
  const void* grad;  // backward only: per-row upstream gradient
  void* loss;        // forward only
  void* stats;
  void* dx;          // backward only
  void* dy;
  int64_t rows, vocab, stride_x, stride_y;
  double inv_temperature;
  int32_t dtype;
} JanusSymKLArgs;

typedef struct JanusCEArgs {
  const void* x;
  const int64_t* target;
  const void* grad;  // backward only
  void* loss;        // forward only
  void* stats;
  void* dx;          // backward only
  int64_t rows, vocab, stride_x, ignore_index;
  double label_smoothing;
  int32_t dtype;
} JanusCEArgs;

cudaError_t janus_symkl_fwd(const JanusSymKLArgs* a, cudaStream_t stream);
cudaError_t janus_symkl_bwd(const JanusSymKLArgs* a, cudaStream_t stream);
cudaError_t janus_ce_fwd(const JanusCEArgs* a, cudaStream_t stream);
cudaError_t janus_ce_bwd(const JanusCEArgs* a, cudaStream_t stream);

#ifdef __cplusplus
}
#endif
