// Moving rows of the attention tensors in and out of fp32 tiles: widening bf16 / fp16 rows to
// fp32 as they are read, rounding fp32 results back to the tensors' dtype, and writing
// results that are not read again soon with non-temporal stores. Shared by every CPU
// attention kernel (attention_common.h includes it).
#pragma once
#include <ATen/ATen.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include <immintrin.h>

namespace janus_cpu {

using at::BFloat16;
using at::Half;

// bf16 and fp16 inputs without a native GEMM for them (no AMX; fp16 always) are computed in
// fp32: each tile is widened into scratch as it is used, so memory never grows by a
// whole-tensor copy. rows_f32 returns the rows as fp32 with their row stride: the tensor
// itself for fp32 (no copy), else the widened copy in `slot` (row stride d).
template <typename T>
inline void widen_row(const T* src, float* dst, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    std::copy_n(src, n, dst);
  } else if constexpr (std::is_same_v<T, Half>) {
    // F16C (every AVX2 CPU has it): at::vec's Half conversion is scalar at these sizes
    int64_t c = 0;
    for (; c + 8 <= n; c += 8)
      _mm256_storeu_ps(dst + c, _mm256_cvtph_ps(_mm_loadu_si128(
                                    reinterpret_cast<const __m128i*>(src + c))));
    for (; c < n; ++c) dst[c] = float(src[c]);
  } else {
    at::vec::convert(src, dst, n);   // vectorized for BFloat16
  }
}

// The inverse: fp32 results rounded to the tensors' dtype (nearest even).
template <typename T>
inline void narrow_row(const float* src, T* dst, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    std::copy_n(src, n, dst);
  } else if constexpr (std::is_same_v<T, Half>) {
    int64_t c = 0;
    for (; c + 8 <= n; c += 8)
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + c),
                       _mm256_cvtps_ph(_mm256_loadu_ps(src + c), _MM_FROUND_TO_NEAREST_INT));
    for (; c < n; ++c) dst[c] = Half(src[c]);
  } else {
    at::vec::convert(src, dst, n);
  }
}

// Outputs at least this large are written with non-temporal stores (store_floats): they
// do not fit the caches anyway, so reading each destination line first (read-for-ownership)
// only adds traffic, a third of the backward's at IWSLT-sized batches. Smaller outputs are
// read by the next op while still cached, which non-temporal stores would prevent.
constexpr int64_t kStreamMinBytes = int64_t(1) << 20;
inline bool stream_outputs(const at::Tensor& t) { return t.nbytes() >= (size_t)kStreamMinBytes; }

// Writes n floats of src (or zeros when src is null) to dst: with non-temporal stores when
// `nt` (where dst is 32-byte aligned; the caller fences with sfence before another thread
// reads them), else plain stores.
inline void store_floats(const float* src, float* dst, int64_t n, bool nt) {
  int64_t c = 0;
  if (nt && reinterpret_cast<uintptr_t>(dst) % 32 == 0) {
    for (; c + 8 <= n; c += 8)
      _mm256_stream_ps(dst + c, src ? _mm256_loadu_ps(src + c) : _mm256_setzero_ps());
  }
  if (src) std::copy(src + c, src + n, dst + c);
  else std::fill(dst + c, dst + n, 0.f);
}

// Writes n fp32 results (src; null: zeros) to a row of the tensors' dtype T: through
// store_floats for fp32 (non-temporal when nt), rounded (narrow_row) for bf16 / fp16.
template <typename T>
inline void store_row(const float* src, T* dst, int64_t n, bool nt) {
  if constexpr (std::is_same_v<T, float>) store_floats(src, dst, n, nt);
  else if (src) narrow_row(src, dst, n);
  else std::fill_n(dst, n, T(0));
}

}  // namespace janus_cpu
