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

// The fused JANUS criterion rows (janus_loss.cu; math, saved statistics and rules of
// csrc/cpu/janus_loss.cpp). AR logits ar (N, V), NAR / AUX logits nar, aux (M, V), each with a
// unit column stride and its own row stride; ar_target (N,), masked_target (M,), ar_kl_rows
// (M,) = the AR row of each masked row, and the plan first (N,) = the smallest masked row m
// with ar_kl_rows[m] == r, or -1 (all int64, contiguous). Outputs in the accumulation type:
// ar_loss (N,), masked_loss (M, 5) = [CE(n), CE(x), KLs(a,n), KLs(a,x), KLs(n,x)], ar_stats
// (N, 2), masked_stats (M, 12); backward inputs grad_ar (N,), grad_masked (M, 5) and the two
// stats; gradients d_ar (N, V), d_nar, d_aux (M, V) contiguous in the logits' dtype.
// Out-of-range targets / ar_kl_rows values (the CPU op raises; here that would need a host
// sync) give NaN for the terms that use them and NaN gradient rows.
typedef struct JanusRowsArgs {
  const void* ar;
  const void* nar;
  const void* aux;
  const int64_t* ar_target;
  const int64_t* masked_target;
  const int64_t* ar_kl_rows;
  const int64_t* first;
  const void* grad_ar;      // backward only
  const void* grad_masked;  // backward only
  void* ar_loss;            // forward only
  void* masked_loss;        // forward only
  void* ar_stats;           // written by the forward, read by the backward
  void* masked_stats;
  void* d_ar;               // backward only
  void* d_nar;
  void* d_aux;
  int64_t n_ar, n_masked, vocab, stride_ar, stride_nar, stride_aux, ignore_index;
  double label_smoothing;
  int32_t dtype;
} JanusRowsArgs;

cudaError_t janus_symkl_fwd(const JanusSymKLArgs* a, cudaStream_t stream);
cudaError_t janus_symkl_bwd(const JanusSymKLArgs* a, cudaStream_t stream);
cudaError_t janus_ce_fwd(const JanusCEArgs* a, cudaStream_t stream);
cudaError_t janus_ce_bwd(const JanusCEArgs* a, cudaStream_t stream);
cudaError_t janus_rows_fwd(const JanusRowsArgs* a, cudaStream_t stream);
// Two launches on `stream`: the AR-row pass, then the repeated-AR-row pass that adds into d_ar.
cudaError_t janus_rows_bwd(const JanusRowsArgs* a, cudaStream_t stream);

#ifdef __cplusplus
}
#endif
