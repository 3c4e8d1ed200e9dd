// Residual dropout on CPU: out = residual + keep * y / (1 - p), in one pass, with the keep-mask
// drawn from the counter-based Philox4x32-10 (csrc/include/janus/philox.h), so the backward
// regenerates it from the seed instead of storing it:   dy = keep * dout / (1 - p).
//
// The bits of flat element e (row-major over the contiguous tensor) for a 64-bit seed:
//   block k = e >> 6, lane l = e & 15, word w = (e >> 4) & 3, call n = 16 k + l
//   u = philox4x32_10(counter = (n lo, n hi, kDropoutStream, 0), key = (seed lo, seed hi))[w]
//   keep = u >= drop_threshold(p)
// One block of 64 elements is 16 Philox calls whose word w covers elements 16 w .. 16 w + 15:
// the 16 calls run side by side (the compiler vectorizes them over the ISA's lanes) and each
// word is a contiguous run of the block. janus_kernels/dropout_add.py spells the same
// (reference backend, Triton). torch's own dropout draws one bernoulli per element from a
// serial generator, ~9 ns per element; this is ~0.5.
// The sum and product are in float (double for float64), rounded once to the output dtype.
#include <ATen/Parallel.h>
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <immintrin.h>

#include <cstdint>
#include <type_traits>

#include "isa_library.h"

// y * m and the sum rounded separately, no fused multiply-add: every backend (the reference,
// Triton) gives the same bits
#pragma GCC optimize("fp-contract=off")

namespace janus_cpu {
namespace {

constexpr int kCalls = 16;                    // Philox calls per block
constexpr int kBlock = 4 * kCalls;            // elements per block
constexpr uint32_t kDropoutStream = 0x44524F50u;   // "DROP": apart from attention's counters

// 32-bit lanes of the build's widest vector, with the two halves of a 32 x 32 -> 64 product
// (mul_epu32 multiplies the even lanes; the odd ones are shifted down and multiplied too).
#if defined(CPU_CAPABILITY_AVX512)
using U32x = __m512i;
constexpr int kLanes = 16;
inline U32x load_u32(const uint32_t* p) { return _mm512_loadu_si512(p); }
inline void store_u32(uint32_t* p, U32x v) { _mm512_storeu_si512(p, v); }
inline U32x splat(uint32_t x) { return _mm512_set1_epi32((int)x); }
inline U32x xor3(U32x a, U32x b, U32x c) { return _mm512_xor_si512(_mm512_xor_si512(a, b), c); }
inline U32x mullo(U32x a, U32x b) { return _mm512_mullo_epi32(a, b); }
inline U32x mulhi(U32x a, U32x b) {
  const U32x even = _mm512_mul_epu32(a, b);
  const U32x odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), _mm512_srli_epi64(b, 32));
  return _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
}
#else
using U32x = __m256i;
constexpr int kLanes = 8;
inline U32x load_u32(const uint32_t* p) { return _mm256_loadu_si256((const __m256i*)p); }
inline void store_u32(uint32_t* p, U32x v) { _mm256_storeu_si256((__m256i*)p, v); }
inline U32x splat(uint32_t x) { return _mm256_set1_epi32((int)x); }
inline U32x xor3(U32x a, U32x b, U32x c) { return _mm256_xor_si256(_mm256_xor_si256(a, b), c); }
inline U32x mullo(U32x a, U32x b) { return _mm256_mullo_epi32(a, b); }
inline U32x mulhi(U32x a, U32x b) {
  const U32x even = _mm256_mul_epu32(a, b);
  const U32x odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), _mm256_srli_epi64(b, 32));
  return _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}
#endif
static_assert(kCalls % kLanes == 0, "a block is whole vectors of Philox calls");

// keep[j] = bits[j] >= thr ? 1 : 0 for a block, without a branch: a data-dependent branch
// mispredicts on about min(p, 1 - p) of the elements (measured 2 ns per element).
inline void keep_flags(const uint32_t* bits, uint32_t thr, float* keep) {
#if defined(CPU_CAPABILITY_AVX512)
  const __m512i t = _mm512_set1_epi32((int)thr);
  for (int j = 0; j < kBlock; j += 16) {
    const __mmask16 k = _mm512_cmpge_epu32_mask(_mm512_loadu_si512(bits + j), t);
    _mm512_storeu_ps(keep + j, _mm512_maskz_mov_ps(k, _mm512_set1_ps(1.f)));
  }
#else   // unsigned a < b as signed after flipping the sign bits
  const __m256i flip = _mm256_set1_epi32(INT32_MIN);
  const __m256i t = _mm256_xor_si256(_mm256_set1_epi32((int)thr), flip);
  for (int j = 0; j < kBlock; j += 8) {
    const __m256i b = _mm256_xor_si256(_mm256_loadu_si256((const __m256i*)(bits + j)), flip);
    const __m256 dropped = _mm256_castsi256_ps(_mm256_cmpgt_epi32(t, b));
    _mm256_storeu_ps(keep + j, _mm256_andnot_ps(dropped, _mm256_set1_ps(1.f)));
  }
#endif
}

// The 64 keep-words of block k: Philox4x32-10 (janus/philox.h) on kLanes calls at a time.
inline void block_bits(uint64_t k, uint32_t key0, uint32_t key1, uint32_t out[kBlock]) {
  const U32x M0 = splat(0xD2511F53u), M1 = splat(0xCD9E8D57u);
  for (int v = 0; v < kCalls; v += kLanes) {
    uint32_t lo[kLanes], hi[kLanes];
    for (int l = 0; l < kLanes; ++l) {
      const uint64_t n = k * kCalls + v + l;
      lo[l] = (uint32_t)n;
      hi[l] = (uint32_t)(n >> 32);
    }
    U32x c0 = load_u32(lo), c1 = load_u32(hi), c2 = splat(kDropoutStream), c3 = splat(0u);
    uint32_t k0 = key0, k1 = key1;
    for (int round = 0; round < 10; ++round) {
      const U32x n0 = xor3(mulhi(M1, c2), c1, splat(k0));
      const U32x n1 = mullo(M1, c2);
      const U32x n2 = xor3(mulhi(M0, c0), c3, splat(k1));
      const U32x n3 = mullo(M0, c0);
      c0 = n0; c1 = n1; c2 = n2; c3 = n3;
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    store_u32(out + v, c0);
    store_u32(out + kCalls + v, c1);
    store_u32(out + 2 * kCalls + v, c2);
    store_u32(out + 3 * kCalls + v, c3);
  }
}

template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

// out[e] = (res ? res[e] : 0) + (keep(e) ? y[e] * scale : 0) for e in [0, n).
template <typename T>
void dropout_add_kernel(const T* y, const T* res, T* out, int64_t n, double p, uint64_t seed) {
  using A = acc_t<T>;
  // floor(p 2^32) from the double p, as janus_kernels/dropout.py's drop_threshold (not from
  // p rounded to float, which moves the threshold by up to 2^-24 p 2^32)
  const double t = p * 4294967296.0;
  const uint32_t thr = t >= 4294967295.0 ? 0xFFFFFFFFu : (uint32_t)t;
  const A scale = A(1.0 / (1.0 - p));   // 1 / (1 - p) in double, rounded once
  const uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  at::parallel_for(0, blocks, 2048, [&](int64_t b0, int64_t b1) {
    alignas(64) uint32_t bits[kBlock];
    alignas(64) float keep[kBlock];
    A m[kBlock];
    for (int64_t k = b0; k < b1; ++k) {
      block_bits((uint64_t)k, k0, k1, bits);
      keep_flags(bits, thr, keep);
      for (int j = 0; j < kBlock; ++j) m[j] = A(keep[j]) * scale;   // scale or 0, exactly
      const int64_t e0 = k * kBlock;
      const int len = (int)std::min<int64_t>(kBlock, n - e0);
      const T* yb = y + e0;
      T* ob = out + e0;
      if (res != nullptr) {
        const T* rb = res + e0;
        for (int j = 0; j < len; ++j) ob[j] = T(A(rb[j]) + A(yb[j]) * m[j]);
      } else {
        for (int j = 0; j < len; ++j) ob[j] = T(A(yb[j]) * m[j]);
      }
    }
  });
}

void check_args(const at::Tensor& y, double p, const at::Tensor& seed, const char* op) {
  TORCH_CHECK(y.device().is_cpu(), op, ": expected CPU tensors, got ", y.device());
  TORCH_CHECK(p >= 0.0 && p < 1.0, op, ": p must be in [0, 1), got ", p);
  TORCH_CHECK(seed.device().is_cpu() && seed.scalar_type() == at::kLong && seed.numel() == 1,
              op, ": seed must be a CPU int64 tensor of one element, got ", seed.scalar_type(),
              " of ", seed.numel(), " elements on ", seed.device());
}

at::Tensor run(const at::Tensor& y_, const c10::optional<at::Tensor>& res_, double p,
               const at::Tensor& seed) {
  const at::Tensor y = y_.contiguous();
  at::Tensor res;
  if (res_.has_value()) {
    res = res_->contiguous();
    TORCH_CHECK(res.sizes() == y.sizes() && res.scalar_type() == y.scalar_type() &&
                    res.device() == y.device(),
                "dropout_add: residual must match y (", y.scalar_type(), " ", y.sizes(),
                "), got ", res.scalar_type(), " ", res.sizes(), " on ", res.device());
  }
  at::Tensor out = at::empty(y.sizes(), y.options());
  const uint64_t s = (uint64_t)seed.item<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, y.scalar_type(), "dropout_add", [&] {
    dropout_add_kernel<scalar_t>(y.data_ptr<scalar_t>(),
                                 res.defined() ? res.data_ptr<scalar_t>() : nullptr,
                                 out.data_ptr<scalar_t>(), y.numel(), p, s);
  });
  return out;
}

// residual + dropout(y): the forward (residual may be None).
at::Tensor dropout_add_fwd(const at::Tensor& y, const c10::optional<at::Tensor>& residual,
                           double p, const at::Tensor& seed) {
  check_args(y, p, seed, "dropout_add_fwd");
  return run(y, residual, p, seed);
}

// dy = keep * dout / (1 - p) (the residual's gradient is dout itself).
at::Tensor dropout_bwd(const at::Tensor& grad, double p, const at::Tensor& seed) {
  check_args(grad, p, seed, "dropout_bwd");
  return run(grad, c10::nullopt, p, seed);
}

void define_dropout_ops(torch::Library& m) {
  m.def("dropout_add_fwd(Tensor y, Tensor? residual, float p, Tensor seed) -> Tensor");
  m.def("dropout_bwd(Tensor grad, float p, Tensor seed) -> Tensor");
}

void register_dropout(torch::Library& m) {
  m.impl("dropout_add_fwd", &dropout_add_fwd);
  m.impl("dropout_bwd", &dropout_bwd);
}

}  // namespace
}  // namespace janus_cpu

JANUS_CPU_SCHEMAS(janus_cpu::define_dropout_ops)
JANUS_CPU_KERNELS(janus_cpu::register_dropout, janus_cpu::register_dropout)
