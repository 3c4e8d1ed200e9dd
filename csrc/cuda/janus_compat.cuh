// One .cu source, two compilers: nvcc for the GPU, g++ (-x c++ -DJANUS_CUDA_EMU) for the CPU
// emulation in csrc/cuda_emu/ that the tests run. Rules for a kernel file:
//   * launch with JANUS_LAUNCH(kernel, grid, block, smem, stream, args...) (g++ cannot parse
//     <<<>>>); a kernel template with several parameters goes through a variable first,
//     `auto k = my_kernel<T, D>;`, since the macro would split at the comma;
//   * dynamic shared memory with JANUS_DYN_SMEM(T, name), never `extern __shared__`;
//   * every PTX instruction through a wrapper below (raw asm cannot compile on the host);
//   * > 48 KiB of dynamic shared memory needs cudaFuncSetAttribute (the emulation checks it).
#pragma once
#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#elif defined(JANUS_CUDA_EMU)
#include "cuda_emu_tc.h"   // -I csrc/cuda_emu
#else
#error "janus_compat.cuh: compile with nvcc, or with g++ -DJANUS_CUDA_EMU -Icsrc/cuda_emu"
#endif

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "janus CUDA kernels need sm_80 or newer (mma.sync bf16, cp.async)"
#endif

#if defined(__CUDACC__)
#define JANUS_LAUNCH(kernel, grid, block, smem, stream, ...) \
  kernel<<<(grid), (block), (smem), (stream)>>>(__VA_ARGS__)
#define JANUS_DYN_SMEM(T, name)                                    \
  extern __shared__ __align__(16) unsigned char janus_dyn_smem_[]; \
  T* name = reinterpret_cast<T*>(janus_dyn_smem_)
#else
#define JANUS_LAUNCH(kernel, grid, block, smem, stream, ...) \
  ::emu::launch((kernel), (grid), (block), (smem), __VA_ARGS__)
#define JANUS_DYN_SMEM(T, name) T* name = reinterpret_cast<T*>(::emu::dyn_smem())
#endif

namespace janus {
namespace ptx {

template <class T> struct is_bf16 { static constexpr bool value = false; };
template <> struct is_bf16<__nv_bfloat16> { static constexpr bool value = true; };

// D = A * B + C, m16n8k16, A row-major / B column-major fragments of 16-bit floats, fp32
// accumulators (fragment tables in csrc/cuda_emu/cuda_emu_tc.h). d may alias c.
__device__ __forceinline__ void mma_m16n8k16_f16(float (&d)[4], const uint32_t (&a)[4],
                                                 const uint32_t (&b)[2], const float (&c)[4]) {
#if defined(__CUDA_ARCH__)
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]),
        "f"(c[1]), "f"(c[2]), "f"(c[3]));
#elif defined(JANUS_CUDA_EMU)
  emu::mma_m16n8k16<false>(d, a, b, c);
#endif
}

__device__ __forceinline__ void mma_m16n8k16_bf16(float (&d)[4], const uint32_t (&a)[4],
                                                  const uint32_t (&b)[2], const float (&c)[4]) {
#if defined(__CUDA_ARCH__)
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]),
        "f"(c[1]), "f"(c[2]), "f"(c[3]));
#elif defined(JANUS_CUDA_EMU)
  emu::mma_m16n8k16<true>(d, a, b, c);
#endif
}

// Accumulating mma on element type T (__half or __nv_bfloat16): acc += A * B.
template <class T>
__device__ __forceinline__ void mma(float (&acc)[4], const uint32_t (&a)[4],
                                    const uint32_t (&b)[2]) {
  if constexpr (is_bf16<T>::value) mma_m16n8k16_bf16(acc, a, b, acc);
  else mma_m16n8k16_f16(acc, a, b, acc);
}

// Four 8x8 b16 matrices from shared memory; lane j gives the address of row j % 8 of matrix
// j / 8 (16-byte aligned).
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem_row) {
#if defined(__CUDA_ARCH__)
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem_row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
#elif defined(JANUS_CUDA_EMU)
  emu::ldmatrix_x4<false>(r, smem_row);
#endif
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem_row) {
#if defined(__CUDA_ARCH__)
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem_row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
#elif defined(JANUS_CUDA_EMU)
  emu::ldmatrix_x4<true>(r, smem_row);
#endif
}

// 16-byte global -> shared copy that bypasses L1; bytes [src_bytes, 16) are zero-filled (and
// nothing is read when src_bytes == 0, so gmem may then be any aligned address).
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, int src_bytes) {
#if defined(__CUDA_ARCH__)
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem),
               "r"(src_bytes)
               : "memory");
#elif defined(JANUS_CUDA_EMU)
  emu::cp_async_16(smem, gmem, src_bytes);
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#elif defined(JANUS_CUDA_EMU)
  emu::cp_async_commit();
#endif
}

// Wait until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#elif defined(JANUS_CUDA_EMU)
  emu::cp_async_wait(N);
#endif
}

// Two floats -> one .b32 register of two 16-bit floats (lo in the low half), rounded to
// nearest even.
template <class T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  uint32_t u;
  if constexpr (is_bf16<T>::value) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    memcpy(&u, &v, 4);
  } else {
    const __half2 v = __floats2half2_rn(lo, hi);
    memcpy(&u, &v, 4);
  }
  return u;
}

template <class T>
__device__ __forceinline__ float to_float(T x) {
  if constexpr (is_bf16<T>::value) return __bfloat162float(x);
  else return __half2float(x);
}

template <class T>
__device__ __forceinline__ T from_float(float x) {
  if constexpr (is_bf16<T>::value) return __float2bfloat16_rn(x);
  else return __float2half_rn(x);
}

}  // namespace ptx
}  // namespace janus
