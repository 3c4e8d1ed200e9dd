// Self-test kernels of the CPU emulation (csrc/cuda_emu/) and of the PTX wrappers in
// csrc/cuda/janus_compat.cuh. tests/test_cuda_emu.py checks their per-lane results against
// an independent Python model of the PTX-ISA fragment tables, and checks that the emulation
// reports deadlocks, stale cp.async reads, missing shared-memory opt-ins and races on atomics.
// Valid CUDA: nvcc compiles it as well (tests/test_nvcc_compile.py does not need it).
#include "../../csrc/cuda/janus_compat.cuh"

using namespace janus::ptx;

// One warp: lane l holds a[l*4..], b[l*2..], c[l*4..]; d[l*4..] = its mma result.
__global__ void mma_kernel(const uint32_t* a, const uint32_t* b, const float* c, float* d,
                           int bf16) {
  const int l = threadIdx.x;
  const uint32_t ra[4] = {a[4 * l], a[4 * l + 1], a[4 * l + 2], a[4 * l + 3]};
  const uint32_t rb[2] = {b[2 * l], b[2 * l + 1]};
  const float rc[4] = {c[4 * l], c[4 * l + 1], c[4 * l + 2], c[4 * l + 3]};
  float rd[4];
  if (bf16) mma_m16n8k16_bf16(rd, ra, rb, rc);
  else mma_m16n8k16_f16(rd, ra, rb, rc);
  for (int i = 0; i < 4; ++i) d[4 * l + i] = rd[i];
}

// One warp: shared memory = 32 rows x 8 b16 (row r = src[8r..8r+7]); lane l passes row
// perm[l]; out[l*4..] = ldmatrix.x4 registers.
__global__ void ldmatrix_kernel(const uint16_t* src, const int* perm, uint32_t* out, int trans) {
  JANUS_DYN_SMEM(uint16_t, s);
  const int l = threadIdx.x;
  for (int i = 0; i < 8; ++i) s[8 * l + i] = src[8 * l + i];
  __syncwarp();
  uint32_t r[4];
  if (trans) ldmatrix_x4_trans(r, s + 8 * perm[l]);
  else ldmatrix_x4(r, s + 8 * perm[l]);
  for (int i = 0; i < 4; ++i) out[4 * l + i] = r[i];
}

// 64 threads: out[t*6..] = xor(5), down(3), up(2), idx(lane 7 of width 16), ballot(odd),
// any/all packed.
__global__ void shuffle_kernel(const int* in, int* out) {
  const int t = threadIdx.x;
  const int v = in[t];
  out[6 * t + 0] = __shfl_xor_sync(0xffffffffu, v, 5);
  out[6 * t + 1] = __shfl_down_sync(0xffffffffu, v, 3);
  out[6 * t + 2] = __shfl_up_sync(0xffffffffu, v, 2);
  out[6 * t + 3] = __shfl_sync(0xffffffffu, v, 7, 16);
  out[6 * t + 4] = (int)__ballot_sync(0xffffffffu, v & 1);
  out[6 * t + 5] = __any_sync(0xffffffffu, v > 1000) * 2 + __all_sync(0xffffffffu, v >= 0);
}

// One 32-thread block: each thread copies 4 floats with cp.async; before[] is what shared
// memory holds before the wait (the emulation keeps the poison), after[] after it.
__global__ void cp_async_kernel(const float* src, float* before, float* after) {
  JANUS_DYN_SMEM(float, s);
  const int t = threadIdx.x;
  cp_async_16(s + 4 * t, src + 4 * t, t == 31 ? 8 : 16);   // the last one zero-fills 2 floats
  cp_async_commit();
  for (int i = 0; i < 4; ++i) before[4 * t + i] = s[4 * t + i];
  cp_async_wait<0>();
  __syncthreads();
  for (int i = 0; i < 4; ++i) after[4 * t + i] = s[4 * t + i];
}

// Every thread of every block adds 1 to total and its block index to imax's maximum.
__global__ void atomics_kernel(float* total, int* imax) {
  atomicAdd(total, 1.0f);
  atomicMax(imax, (int)blockIdx.x);
}

// kind 0: warp 0 waits at a __syncthreads inside `if`, warp 1 at the next one (divergent
// barrier); kind 1: a shuffle inside `if (lane == 0)` waits for lanes that exit.
__global__ void deadlock_kernel(int kind, int* out) {
  const int t = threadIdx.x;
  if (kind == 0 && t < 32) __syncthreads();
  if (kind == 0) __syncthreads();
  if (kind == 1 && (t & 31) == 0) out[t] = __shfl_xor_sync(0xffffffffu, t, 1);
  out[t] = t;
}

__global__ void big_smem_kernel(float* out) {
  JANUS_DYN_SMEM(float, s);
  s[threadIdx.x] = 1.f;
  out[threadIdx.x] = s[threadIdx.x];
}

extern "C" {

int selftest_mma(const uint32_t* a, const uint32_t* b, const float* c, float* d, int bf16) {
  JANUS_LAUNCH(mma_kernel, dim3(1), dim3(32), 0, nullptr, a, b, c, d, bf16);
  return (int)cudaGetLastError();
}

int selftest_ldmatrix(const uint16_t* src, const int* perm, uint32_t* out, int trans) {
  JANUS_LAUNCH(ldmatrix_kernel, dim3(1), dim3(32), 32 * 8 * 2, nullptr, src, perm, out, trans);
  return (int)cudaGetLastError();
}

int selftest_shuffle(const int* in, int* out) {
  JANUS_LAUNCH(shuffle_kernel, dim3(1), dim3(64), 0, nullptr, in, out);
  return (int)cudaGetLastError();
}

int selftest_cp_async(const float* src, float* before, float* after) {
  JANUS_LAUNCH(cp_async_kernel, dim3(1), dim3(32), 128 * 4, nullptr, src, before, after);
  return (int)cudaGetLastError();
}

int selftest_atomics(int blocks, int threads, float* total, int* imax) {
  JANUS_LAUNCH(atomics_kernel, dim3(blocks), dim3(threads), 0, nullptr, total, imax);
  return (int)cudaGetLastError();
}

int selftest_deadlock(int kind, int* out) {
  JANUS_LAUNCH(deadlock_kernel, dim3(1), dim3(64), 0, nullptr, kind, out);
  return (int)cudaGetLastError();
}

// opt_in: call cudaFuncSetAttribute first; 64 KiB of dynamic shared memory.
int selftest_big_smem(int opt_in, float* out) {
  const int bytes = 64 * 1024;
  if (opt_in) {
    const cudaError_t e = cudaFuncSetAttribute(reinterpret_cast<const void*>(big_smem_kernel),
                                               cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    if (e != cudaSuccess) return (int)e;
  }
  JANUS_LAUNCH(big_smem_kernel, dim3(1), dim3(32), bytes, nullptr, out);
  return (int)cudaGetLastError();
}

}  // extern "C"
