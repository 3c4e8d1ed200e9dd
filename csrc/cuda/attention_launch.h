// Raw-pointer entry points of the CUDA attention kernels (attention_fwd.cu, attention_bwd.cu):
// no torch types, so the torch glue (attention_glue.cpp) and the CPU-emulation tests (ctypes,
// tests/test_cuda_emu.py mirrors these structs) call the same functions.
//
// Layouts: q (B, H, Lq, d), k/v (B, Hkv, Lk, d), out/dout like q, lse/delta (B, H, Lq) fp32.
// Strides are in elements for the batch, head and row dimensions; the last dimension is
// contiguous. Pointers and all strides must be multiples of 16 bytes (8 elements) for the
// 16-byte cp.async loads. dtype: 0 = float16, 1 = bfloat16. 8 <= head_dim <= 128,
// head_dim % 8 == 0. Mask: janus/mask.h (params (B, NUM_FIELDS) int32 contiguous, side table
// rank (B, *) int32 with row stride rank_stride: permutation ranks, or the (B, Lq + Lk)
// document ids of the documents kind). Dropout: janus/philox.h.
#pragma once
#include <stdint.h>

#include <cuda_runtime_api.h>   // cudaError_t, cudaStream_t (declarations only)

#ifdef __cplusplus
extern "C" {
#endif

enum { JANUS_DTYPE_F16 = 0, JANUS_DTYPE_BF16 = 1 };

typedef struct JanusAttnFwdArgs {
  const void* q;
  const void* k;
  const void* v;
  void* out;
  float* lse;                 // (B, H, Lq) contiguous
  const int32_t* mask_params;
  const int32_t* mask_rank;   // nullptr unless mask_kind == 1 or 2
  int64_t rank_stride;
  int64_t q_stride[3];        // batch, head, row
  int64_t k_stride[3];
  int64_t v_stride[3];
  int64_t o_stride[3];
  int32_t B, H, Hkv, Lq, Lk, head_dim;
  int32_t q_split, mask_kind, dtype;
  float scale;
  float dropout_p;
  uint64_t seed;
} JanusAttnFwdArgs;

typedef struct JanusAttnBwdArgs {
  const void* dout;
  const void* q;
  const void* k;
  const void* v;
  const void* out;
  const float* lse;           // (B, H, Lq) contiguous
  void* dq;
  void* dk;
  void* dv;
  float* delta;               // workspace (B, H, Lq) fp32
  const int32_t* mask_params;
  const int32_t* mask_rank;
  int64_t rank_stride;
  int64_t do_stride[3];
  int64_t q_stride[3];
  int64_t k_stride[3];
  int64_t v_stride[3];
  int64_t o_stride[3];
  int64_t dq_stride[3];
  int64_t dk_stride[3];
  int64_t dv_stride[3];
  int32_t B, H, Hkv, Lq, Lk, head_dim;
  int32_t q_split, mask_kind, dtype;
  float scale;
  float dropout_p;
  uint64_t seed;
} JanusAttnBwdArgs;

// Enqueue the forward / backward on `stream`. Return cudaErrorInvalidValue for unsupported
// arguments (see above), else the launch status (cudaGetLastError()).
cudaError_t janus_cuda_attention_fwd(const JanusAttnFwdArgs* args, cudaStream_t stream);
cudaError_t janus_cuda_attention_bwd(const JanusAttnBwdArgs* args, cudaStream_t stream);

// Kernel geometry for reports and tests: which 0 = forward, 1 = backward dK/dV, 2 = backward dQ.
// Returns 0 and fills rows per tile, keys per tile, threads per block and dynamic shared
// memory bytes, or -1 for an unsupported (which, head_dim).
int janus_cuda_attention_config(int which, int head_dim, int* block_m, int* block_n,
                                int* threads, int* smem_bytes);

#ifdef __cplusplus
}
#endif
