// The machine's own compute peaks at this ISA level, for the benchmarks' floors
// (benchmarks/common.py): a register-only FMA loop (the theoretical fp32 peak the vector units
// reach) and the rate of the brgemm tiles the attention kernels are built from. torch.matmul
// is no peak on every CPU (MKL's AMD path ran below our kernels' useful rate on a Zen 2), so
// the benchmarks take the largest of the three.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/native/CPUBlas.h>

#include <chrono>
#include <vector>

#include "isa_library.h"

namespace janus_cpu {
namespace {

using Vec = at::vec::Vectorized<float>;

// fp32 GFLOP/s of `iters` rounds of 12 independent FMA chains per thread, on all threads.
double fma_peak_gflops(int64_t iters) {
  TORCH_CHECK(iters > 0 && iters <= (int64_t(1) << 40), "iters: must be in [1, 2^40]");
  constexpr int kChains = 12;   // > FMA latency x ports, so the loop is throughput-bound
  const int nthreads = at::get_num_threads();
  std::vector<float> sink(nthreads * Vec::size());
  const auto t0 = std::chrono::steady_clock::now();
  at::parallel_for(0, nthreads, 1, [&](int64_t t_begin, int64_t t_end) {
    for (int64_t t = t_begin; t < t_end; ++t) {
      Vec acc[kChains];
      for (int c = 0; c < kChains; ++c) acc[c] = Vec(1.0f + 1e-7f * c);
      const Vec a(0.999999f), b(1e-7f);
      for (int64_t i = 0; i < iters; ++i)
        for (int c = 0; c < kChains; ++c) acc[c] = at::vec::fmadd(acc[c], a, b);
      Vec total = acc[0];
      for (int c = 1; c < kChains; ++c) total = total + acc[c];
      total.store(sink.data() + t * Vec::size());   // keeps the loop alive
    }
  });
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double flops = 2.0 * kChains * Vec::size() * double(iters) * nthreads;
  return flops / secs / 1e9;
}

// GFLOP/s of an (M x K) @ (K x N) brgemm tile (fp32, or bf16 with a VNNI B operand where
// the CPU has bf16 brgemm), repeated `iters` times per thread on cache-resident operands.
double brgemm_tile_gflops(int64_t M, int64_t N, int64_t K, bool bf16, int64_t iters) {
  TORCH_CHECK(M > 0 && N > 0 && K > 0 && M <= 1024 && N <= 1024 && K <= 1024,
              "M, N, K: must be in [1, 1024]");
  TORCH_CHECK(iters > 0 && iters <= (int64_t(1) << 30), "iters: must be in [1, 2^30]");
  TORCH_CHECK(!bf16 || (K % 2 == 0 && at::native::cpublas::could_pack(at::kBFloat16)),
              "bf16: needs an even K and a CPU with bf16 brgemm (AMX)");
  const int nthreads = at::get_num_threads();
  const auto t0 = std::chrono::steady_clock::now();
  at::parallel_for(0, nthreads, 1, [&](int64_t t_begin, int64_t t_end) {
    for (int64_t t = t_begin; t < t_end; ++t) {
      std::vector<float> c(M * N, 0.f);
      if (bf16) {
        std::vector<at::BFloat16> a(M * K, at::BFloat16(0.01f)), b(K * N, at::BFloat16(0.01f));
        for (int64_t i = 0; i < iters; ++i)
          at::native::cpublas::brgemm(M, N, K, K, N, N, i > 0, a.data(), b.data(), c.data(),
                                      true);
        at::native::cpublas::brgemm_release(true);
      } else {
        std::vector<float> a(M * K, 0.01f), b(K * N, 0.01f);
        for (int64_t i = 0; i < iters; ++i)
          at::native::cpublas::brgemm(M, N, K, K, N, N, i > 0, a.data(), b.data(), c.data());
      }
    }
  });
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return 2.0 * M * N * K * double(iters) * nthreads / secs / 1e9;
}

void define_peak_ops(torch::Library& m) {
  m.def("fma_peak_gflops(int iters) -> float", &fma_peak_gflops);
  m.def("brgemm_tile_gflops(int M, int N, int K, bool bf16, int iters) -> float",
        &brgemm_tile_gflops);
}

}  // namespace
}  // namespace janus_cpu

// schemas with their (device-independent) kernels, in this build's namespace(s)
JANUS_CPU_SCHEMAS(janus_cpu::define_peak_ops)
