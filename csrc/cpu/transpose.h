// Transpose of small 32-bit blocks: dst[j][i] = src[i][j] for i < rows, j < cols.
//
// The attention kernels transpose one (rows <= 128) x (d <= 256) block per row block or
// head (Q^T, dO^T, K^T, dQ), and at IWSLT-sized batches (~40 rows, d = 64) these blocks
// are tiny. at::native::utils::transpose (fbgemm) takes ~650 ns for 36 x 64 floats there,
// as long as one of the tile GEMMs; the 16 x 16 in-register transpose below takes ~100 ns.
// bf16 data is transposed in 32-bit units too (VNNI pairs, see attention.cpp).
#pragma once
#include <ATen/native/cpu/utils.h>

#include <cstdint>

#if defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>
#endif

namespace janus_cpu {

#if defined(CPU_CAPABILITY_AVX512)
// One 16 x 16 tile: rows [0, nr) and columns [0, nc) of src are read (the rest as zero),
// rows [0, nc) x columns [0, nr) of dst are written.
inline void transpose_tile16(const uint32_t* src, int64_t lds, int nr, int nc, uint32_t* dst,
                             int64_t ldd) {
  const __mmask16 cmask = (__mmask16)((1u << nc) - 1u);
  const __mmask16 rmask = (__mmask16)((1u << nr) - 1u);
  __m512i r[16], t[16];
  for (int i = 0; i < 16; ++i)
    r[i] = i < nr ? _mm512_maskz_loadu_epi32(cmask, src + i * lds) : _mm512_setzero_si512();
  // stage 1: interleave row pairs (32-bit)
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  // stage 2 (64-bit): in 128-bit lane L, r[4g + k] now holds column 4L + k of rows 4g..4g+3
  for (int g = 0; g < 4; ++g) {
    r[4 * g + 0] = _mm512_unpacklo_epi64(t[4 * g], t[4 * g + 2]);
    r[4 * g + 1] = _mm512_unpackhi_epi64(t[4 * g], t[4 * g + 2]);
    r[4 * g + 2] = _mm512_unpacklo_epi64(t[4 * g + 1], t[4 * g + 3]);
    r[4 * g + 3] = _mm512_unpackhi_epi64(t[4 * g + 1], t[4 * g + 3]);
  }
  // stages 3-4: gather lane L of r[k], r[4+k], r[8+k], r[12+k] into column 4L + k
  for (int k = 0; k < 4; ++k) {
    const __m512i a02 = _mm512_shuffle_i32x4(r[k], r[4 + k], 0x88);
    const __m512i a13 = _mm512_shuffle_i32x4(r[k], r[4 + k], 0xdd);
    const __m512i b02 = _mm512_shuffle_i32x4(r[8 + k], r[12 + k], 0x88);
    const __m512i b13 = _mm512_shuffle_i32x4(r[8 + k], r[12 + k], 0xdd);
    const __m512i col[4] = {_mm512_shuffle_i32x4(a02, b02, 0x88),    // column k
                            _mm512_shuffle_i32x4(a13, b13, 0x88),    // column 4 + k
                            _mm512_shuffle_i32x4(a02, b02, 0xdd),    // column 8 + k
                            _mm512_shuffle_i32x4(a13, b13, 0xdd)};   // column 12 + k
    for (int L = 0; L < 4; ++L) {
      const int c = 4 * L + k;
      if (c < nc) _mm512_mask_storeu_epi32(dst + c * ldd, rmask, col[L]);
    }
  }
}
#endif

// dst (cols x rows, row stride ldd) = src (rows x cols, row stride lds)^T, 32-bit elements.
inline void transpose32(int64_t rows, int64_t cols, const uint32_t* src, int64_t lds,
                        uint32_t* dst, int64_t ldd) {
#if defined(CPU_CAPABILITY_AVX512)
  for (int64_t i = 0; i < rows; i += 16)
    for (int64_t j = 0; j < cols; j += 16)
      transpose_tile16(src + i * lds + j, lds, (int)std::min<int64_t>(16, rows - i),
                       (int)std::min<int64_t>(16, cols - j), dst + j * ldd + i, ldd);
#else
  at::native::utils::transpose<float>(rows, cols, reinterpret_cast<const float*>(src), lds,
                                      reinterpret_cast<float*>(dst), ldd);
#endif
}

inline void transpose32(int64_t rows, int64_t cols, const float* src, int64_t lds, float* dst,
                        int64_t ldd) {
  transpose32(rows, cols, reinterpret_cast<const uint32_t*>(src), lds,
              reinterpret_cast<uint32_t*>(dst), ldd);
}

}  // namespace janus_cpu
