// CPU emulation of the CUDA execution model, so that torch-free .cu files compile UNCHANGED
// with g++ (-x c++ -DJANUS_CUDA_EMU) and their kernel bodies run on the host for tests.
//
// Model
//   * A launch runs its blocks on EMU_WORKERS OS threads (default: hardware threads); each
//     block runs on one worker, each CUDA thread of the block is a fiber (own stack) on it.
//   * A fiber runs until it reaches a barrier: __syncthreads (block), or a warp collective
//     (__shfl_*_sync, __ballot_sync, __syncwarp, mma/ldmatrix emulation). A barrier is
//     released when every participant arrived; exited threads count as arrived for
//     __syncthreads. If no fiber can run while some are alive, the launch fails with a
//     "deadlock" message (divergent __syncthreads, a shuffle inside `if (lane == 0)`, ...).
//   * EMU_ORDER picks which ready fiber runs next: 0 the first in thread order, 1 the first
//     in reverse order (both greedy: one warp runs ahead through its warp collectives up to
//     its next __syncthreads, so a missing block barrier lets it read data other warps have
//     not written yet, or overwrite data they still read), 2 random interleaving (EMU_SEED).
//   * EMU_BLOCK_ORDER: 0 (default) hands out blocks in ascending linear index, 1 descending;
//     with one worker this fixes the order in which blocks' global-memory effects happen, so
//     a result that depends on it (fp32 atomicAdd from several blocks) shows up.
//   * EMU_CP_ASYNC: 0 (default) performs cp.async copies at wait_group, so a missing wait reads
//     stale or poisoned shared memory; 1 performs them at issue, so a copy into a buffer other
//     warps still read (missing barrier before a prefetch) corrupts their reads.
//   * Warp collectives exchange data through a per-warp bank of 64-byte lane slots; two banks
//     alternate, so one barrier per collective suffices (a lane cannot publish twice into a
//     bank before every lane has read it: that would need the next collective to complete).
//   * __shared__ variables are `static thread_local` (one copy per worker = per running
//     block); dynamic shared memory is a per-block buffer poisoned with 0xFF (NaN for fp16,
//     bf16 and fp32) at every block start, so reads of unwritten shared memory show up.
//   * Atomics use std::atomic_ref (blocks on different workers really race).
//   * Fibers switch with a 14-instruction x86-64 routine; -DEMU_UCONTEXT (or a non-x86-64
//     host) uses ucontext instead (slower, but understood by sanitizers).
// Limits: memory is sequentially consistent, no grid-wide sync, no spin-waiting on other
// blocks, no textures; numerics follow host libm (compare with tolerances).
#pragma once
#ifndef JANUS_CUDA_EMU
#define JANUS_CUDA_EMU 1
#endif

#include <cuda_bf16.h>       // host-usable __nv_bfloat16 (pulls in cuda_runtime_api.h)
#include <cuda_fp16.h>       // host-usable __half
#include <driver_types.h>    // cudaError_t, cudaStream_t
#include <vector_types.h>    // dim3, uint3

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <vector>

#if defined(EMU_UCONTEXT) || !defined(__x86_64__)
#define EMU_USE_UCONTEXT 1
#include <ucontext.h>
#endif

// ------------------------------------------------------------------ CUDA keywords
// The toolkit headers define these as attributes for the host compiler; CUDA code in this
// mode is plain host code.
#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __constant__
#undef __forceinline__
#undef __noinline__
#define __global__
#define __device__
#define __host__
#define __constant__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __shared__ static thread_local
#define __launch_bounds__(...)

inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;
constexpr int warpSize = 32;

namespace emu {

// ------------------------------------------------------------------ fiber switch
#if !defined(EMU_USE_UCONTEXT)
// janus_emu_switch(save, next): push callee-saved registers, store rsp in *save, load rsp
// from next, pop and return into the other context. A new fiber's stack is prepared so that
// the first switch "returns" into janus_emu_trampoline, which calls rbx(r12) (never returns).
// Weak + hidden: every translation unit emits it, the linker keeps one.
extern "C" void janus_emu_switch(void** save, void* next);
extern "C" void janus_emu_trampoline();
asm(R"(
  .pushsection .text
  .weak janus_emu_switch
  .hidden janus_emu_switch
  .type janus_emu_switch, @function
janus_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size janus_emu_switch, .-janus_emu_switch
  .weak janus_emu_trampoline
  .hidden janus_emu_trampoline
  .type janus_emu_trampoline, @function
janus_emu_trampoline:
  movq %r12, %rdi
  callq *%rbx
  ud2
  .size janus_emu_trampoline, .-janus_emu_trampoline
  .popsection
)");
#endif

enum class St : uint8_t { Ready, AtBarrier, AtWarp, Done };

struct CpOp {           // one queued cp.async
  void* dst;
  const void* src;
  int src_bytes;        // copied bytes; the rest of the 16 is zero-filled
  int group;            // commit-group index
};

struct Fiber {
  void* sp = nullptr;
#if defined(EMU_USE_UCONTEXT)
  ucontext_t uc;
#endif
  char* stack_lo = nullptr;
  char* stack_hi = nullptr;
  uint3 idx{};
  int tid = 0;
  St state = St::Ready;
  const char* bar_file = nullptr;   // call site of the barrier it waits at
  int bar_line = 0;
  unsigned warp_mask = 0;           // mask of the warp collective it waits at
  int bank = 0;                     // bank of this lane's next warp collective
  int coll_bank = 0;                // bank of the collective it last completed
  unsigned long long coll_id = 0;   // id of that collective (per warp, increasing)
  std::vector<CpOp> cp;             // cp.async issued and not yet waited for
  int cp_groups = 0;                // committed groups so far
};

constexpr int kSlotBytes = 64;
constexpr int kResultBytes = 16 * 8 * 4;  // the largest once-per-warp result (mma D)

struct Warp {
  unsigned arrived = 0;
  unsigned long long completed = 0;
  alignas(16) unsigned char slot[2][32][kSlotBytes];
  alignas(16) unsigned char result[2][kResultBytes];
  unsigned long long result_id[2] = {~0ull, ~0ull};
};

struct BlockCtx {
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  int nthreads = 0;
  int live = 0;
  int at_barrier = 0;
  void* sched_sp = nullptr;
#if defined(EMU_USE_UCONTEXT)
  ucontext_t sched_uc;
#endif
  Fiber* cur = nullptr;
  unsigned char* dyn_smem = nullptr;
  size_t dyn_bytes = 0;
  std::string error;
  const std::function<void()>* body = nullptr;
};

inline thread_local BlockCtx* tl_ctx = nullptr;

// ------------------------------------------------------------------ configuration
inline int env_int(const char* name, int dflt) {
  const char* s = std::getenv(name);
  return (s && *s) ? std::atoi(s) : dflt;
}

struct Config {
  int order = -1;      // -1: read EMU_ORDER at each launch
  int workers = -1;    // -1: read EMU_WORKERS
  unsigned seed = 0;   // 0: read EMU_SEED
  int cp_eager = -1;   // -1: read EMU_CP_ASYNC (0 lazy: copy at wait_group, 1 eager: at issue)
  int block_order = -1;   // -1: read EMU_BLOCK_ORDER (0 ascending block index, 1 descending)
};
inline Config& config() { static Config c; return c; }
inline bool& cp_eager_mode() { static bool eager = false; return eager; }

// Shared-memory opt-in per kernel (cudaFuncAttributeMaxDynamicSharedMemorySize), checked at
// launch like the hardware does: more than 48 KiB of dynamic shared memory needs it.
constexpr size_t kDefaultDynSmem = 48 * 1024;
constexpr size_t kMaxDynSmem = 227 * 1024;   // sm_90 opt-in limit
struct SmemOptIn { const void* fn; size_t bytes; };
inline std::mutex& optin_mutex() { static std::mutex m; return m; }
inline std::vector<SmemOptIn>& optins() { static std::vector<SmemOptIn> v; return v; }
inline void set_max_dyn_smem(const void* fn, size_t bytes) {
  std::lock_guard<std::mutex> g(optin_mutex());
  for (auto& o : optins()) if (o.fn == fn) { o.bytes = bytes; return; }
  optins().push_back({fn, bytes});
}
inline size_t max_dyn_smem(const void* fn) {
  std::lock_guard<std::mutex> g(optin_mutex());
  for (auto& o : optins()) if (o.fn == fn) return std::max(o.bytes, kDefaultDynSmem);
  return kDefaultDynSmem;
}

// Last launch failure (message) of the calling host thread, and the cudaError_t behind
// cudaGetLastError() (defined in emu_runtime.cpp).
inline thread_local std::string tl_last_message;
inline thread_local cudaError_t tl_last_error = cudaSuccess;

// ------------------------------------------------------------------ scheduling
inline void switch_to_scheduler() {
  BlockCtx& c = *tl_ctx;
#if defined(EMU_USE_UCONTEXT)
  swapcontext(&c.cur->uc, &c.sched_uc);
#else
  janus_emu_switch(&c.cur->sp, c.sched_sp);
#endif
}

// Abort the running block with a message (called from kernel context).
[[noreturn]] inline void fail(const std::string& msg) {
  BlockCtx& c = *tl_ctx;
  if (c.error.empty()) {
    char where[96];
    std::snprintf(where, sizeof where, " [block (%u,%u,%u) thread (%u,%u,%u)]", blockIdx.x,
                  blockIdx.y, blockIdx.z, threadIdx.x, threadIdx.y, threadIdx.z);
    c.error = msg + where;
  }
  c.cur->state = St::Done;
  switch_to_scheduler();
  __builtin_unreachable();
}

inline void run_cp_ops(Fiber& f, int upto_group);  // below

inline void release_block_barrier(BlockCtx& c) {
  const char* file = nullptr;
  int line = 0;
  for (Fiber& f : c.fibers) {
    if (f.state != St::AtBarrier) continue;
    if (!file) { file = f.bar_file; line = f.bar_line; }
    else if (f.bar_line != line || std::strcmp(f.bar_file, file) != 0) {
      c.error = "deadlock: threads wait at different __syncthreads (" + std::string(file) +
                ":" + std::to_string(line) + " and " + f.bar_file + ":" +
                std::to_string(f.bar_line) + ")";
    }
    f.state = St::Ready;
  }
  c.at_barrier = 0;
}

inline void fiber_main(void* p) {
  BlockCtx& c = *static_cast<BlockCtx*>(p);
  (*c.body)();
  Fiber& f = *c.cur;
  run_cp_ops(f, 1 << 30);   // copies never waited for still land (as on the hardware)
  f.state = St::Done;
  --c.live;
  if (c.at_barrier > 0 && c.at_barrier == c.live) release_block_barrier(c);
  switch_to_scheduler();
  __builtin_unreachable();
}

#if defined(EMU_USE_UCONTEXT)
inline void fiber_main_uc(unsigned lo, unsigned hi) {
  fiber_main(reinterpret_cast<void*>((uintptr_t)lo | ((uintptr_t)hi << 32)));
}
#endif

inline void prepare_fiber(BlockCtx& c, Fiber& f) {
#if defined(EMU_USE_UCONTEXT)
  getcontext(&f.uc);
  f.uc.uc_stack.ss_sp = f.stack_lo;
  f.uc.uc_stack.ss_size = (size_t)(f.stack_hi - f.stack_lo);
  f.uc.uc_link = nullptr;
  const uintptr_t p = reinterpret_cast<uintptr_t>(&c);
  makecontext(&f.uc, (void (*)())fiber_main_uc, 2, (unsigned)(p & 0xffffffffu),
              (unsigned)(p >> 32));
#else
  // Stack top T (16-aligned): [T-8] trampoline, [T-16] rbp, [T-24] rbx = entry,
  // [T-32] r12 = argument, [T-40..T-56] r13..r15. After the pops and ret, rsp = T.
  uintptr_t* top = reinterpret_cast<uintptr_t*>(reinterpret_cast<uintptr_t>(f.stack_hi) & ~15ull);
  top[-1] = reinterpret_cast<uintptr_t>(&janus_emu_trampoline);
  top[-2] = 0;
  top[-3] = reinterpret_cast<uintptr_t>(&fiber_main);
  top[-4] = reinterpret_cast<uintptr_t>(&c);
  top[-5] = top[-6] = top[-7] = 0;
  f.sp = top - 7;
#endif
}

inline std::string describe_deadlock(const BlockCtx& c) {
  std::string s = "deadlock: no thread can run;";
  int shown = 0;
  for (const Fiber& f : c.fibers) {
    if (f.state == St::Done || shown >= 6) continue;
    ++shown;
    s += " thread " + std::to_string(f.tid);
    if (f.state == St::AtBarrier)
      s += " at __syncthreads " + std::string(f.bar_file) + ":" + std::to_string(f.bar_line) + ";";
    else {
      char m[16];
      std::snprintf(m, sizeof m, "%08x", f.warp_mask);
      s += " at a warp collective (mask " + std::string(m) + ");";
    }
  }
  return s + " (threads wait at different barriers, or a warp collective names an exited lane)";
}

// Runs one block to completion; false (and c.error set) on failure.
inline bool run_block(BlockCtx& c, uint3 bid, int order, std::mt19937& rng) {
  blockIdx = bid;
  const int n = c.nthreads;
  for (int t = 0; t < n; ++t) {
    Fiber& f = c.fibers[t];
    f.state = St::Ready;
    f.bank = 0;
    f.cp.clear();
    f.cp_groups = 0;
    prepare_fiber(c, f);
  }
  for (Warp& w : c.warps) {
    w.arrived = 0;
    w.completed = 0;
    w.result_id[0] = w.result_id[1] = ~0ull;
  }
  c.live = n;
  c.at_barrier = 0;
  if (c.dyn_bytes) std::memset(c.dyn_smem, 0xFF, c.dyn_bytes);   // NaN poison
  std::vector<int> perm(n);
  std::iota(perm.begin(), perm.end(), 0);
  if (order == 1) std::reverse(perm.begin(), perm.end());
  auto resume = [&c](Fiber& f) {
    c.cur = &f;
    threadIdx = f.idx;
#if defined(EMU_USE_UCONTEXT)
    swapcontext(&c.sched_uc, &f.uc);
#else
    janus_emu_switch(&c.sched_sp, f.sp);
#endif
  };
  while (c.live > 0) {
    bool ran = false;
    if (order == 2) {          // random rounds: every ready fiber once, in a fresh order
      std::shuffle(perm.begin(), perm.end(), rng);
      for (int t : perm) {
        if (c.fibers[t].state != St::Ready) continue;
        resume(c.fibers[t]);
        ran = true;
        if (!c.error.empty()) return false;
      }
    } else {                   // greedy: always the first ready fiber in priority order, so
      for (int t : perm) {     // a warp runs ahead to its next __syncthreads
        if (c.fibers[t].state != St::Ready) continue;
        resume(c.fibers[t]);
        ran = true;
        break;
      }
      if (!c.error.empty()) return false;
    }
    if (!ran) {
      c.error = describe_deadlock(c);
      return false;
    }
  }
  return true;
}

// Stacks of one worker: nthreads regions with a guard page below each.
struct Stacks {
  char* base = nullptr;
  size_t total = 0;
  Stacks(int n, size_t size) {
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size = (size + page - 1) / page * page;
    total = (size + page) * n;
    void* p = mmap(nullptr, total, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) { base = nullptr; return; }
    base = static_cast<char*>(p);
    for (int i = 0; i < n; ++i) mprotect(base + i * (size + page), page, PROT_NONE);
  }
  ~Stacks() { if (base) munmap(base, total); }
};

inline void run_grid(dim3 grid, dim3 block, size_t dyn, const void* fn,
                     const std::function<void()>& body) {
  tl_last_error = cudaSuccess;
  tl_last_message.clear();
  const long long nthreads = (long long)block.x * block.y * block.z;
  const long long nblocks = (long long)grid.x * grid.y * grid.z;
  auto reject = [](const std::string& m) {
    tl_last_error = cudaErrorInvalidConfiguration;
    tl_last_message = m;
  };
  if (nthreads < 1 || nthreads > 1024)
    return reject("invalid block size " + std::to_string(nthreads));
  if (grid.y > 65535 || grid.z > 65535) return reject("grid.y/grid.z above 65535");
  if (dyn > max_dyn_smem(fn)) {
    tl_last_error = cudaErrorInvalidValue;
    tl_last_message = "dynamic shared memory " + std::to_string(dyn) +
                      " B exceeds the kernel's limit " + std::to_string(max_dyn_smem(fn)) +
                      " B (missing cudaFuncSetAttribute opt-in?)";
    return;
  }
  if (nblocks == 0) return;
  Config& cfg = config();
  const int order = cfg.order >= 0 ? cfg.order : env_int("EMU_ORDER", 0);
  int workers = cfg.workers > 0 ? cfg.workers : env_int("EMU_WORKERS", 0);
  if (workers <= 0) workers = (int)std::max(1u, std::thread::hardware_concurrency());
  workers = (int)std::min<long long>(workers, nblocks);
  const unsigned seed = cfg.seed ? cfg.seed : (unsigned)env_int("EMU_SEED", 12345);
  cp_eager_mode() = (cfg.cp_eager >= 0 ? cfg.cp_eager : env_int("EMU_CP_ASYNC", 0)) != 0;
  const bool blocks_descending =
      (cfg.block_order >= 0 ? cfg.block_order : env_int("EMU_BLOCK_ORDER", 0)) == 1;
  const size_t stack_bytes = (size_t)env_int("EMU_STACK_KB", 256) * 1024;

  std::atomic<long long> next{0};
  std::atomic<bool> failed{false};
  std::mutex err_mu;
  std::string first_error;

  auto worker = [&](int wid) {
    Stacks stacks((int)nthreads, stack_bytes);
    if (!stacks.base) {
      failed = true;
      std::lock_guard<std::mutex> g(err_mu);
      first_error = "mmap of fiber stacks failed";
      return;
    }
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    const size_t ssz = (stack_bytes + page - 1) / page * page;
    BlockCtx c;
    c.nthreads = (int)nthreads;
    c.fibers.resize(nthreads);
    c.warps.resize((nthreads + 31) / 32);
    for (int t = 0; t < nthreads; ++t) {
      Fiber& f = c.fibers[t];
      f.tid = t;
      f.idx = uint3{(unsigned)(t % block.x), (unsigned)(t / block.x % block.y),
                    (unsigned)(t / (block.x * block.y))};
      f.stack_lo = stacks.base + t * (ssz + page) + page;
      f.stack_hi = f.stack_lo + ssz;
    }
    std::vector<unsigned char> smem_store(dyn + 128);
    c.dyn_bytes = dyn;
    c.dyn_smem = reinterpret_cast<unsigned char*>(
        (reinterpret_cast<uintptr_t>(smem_store.data()) + 127) & ~uintptr_t(127));
    c.body = &body;
    blockDim = block;
    gridDim = grid;
    BlockCtx* saved = tl_ctx;
    tl_ctx = &c;
    std::mt19937 rng(seed + 7919u * (unsigned)wid);
    for (;;) {
      if (failed.load(std::memory_order_relaxed)) break;
      const long long taken = next.fetch_add(1);
      if (taken >= nblocks) break;
      const long long b = blocks_descending ? nblocks - 1 - taken : taken;
      const uint3 bid{(unsigned)(b % grid.x), (unsigned)(b / grid.x % grid.y),
                      (unsigned)(b / ((long long)grid.x * grid.y))};
      rng.seed(seed + (unsigned)b * 2654435761u);   // order 2 reproducible per block
      if (!run_block(c, bid, order, rng)) {
        failed = true;
        std::lock_guard<std::mutex> g(err_mu);
        if (first_error.empty()) first_error = c.error;
        break;
      }
    }
    tl_ctx = saved;
  };
  if (workers == 1) {
    worker(0);
  } else {
    std::vector<std::thread> pool;
    for (int w = 0; w < workers; ++w) pool.emplace_back(worker, w);
    for (auto& t : pool) t.join();
  }
  if (failed) {
    tl_last_error = cudaErrorLaunchFailure;
    tl_last_message = first_error;
  }
}

// launch(kernel, grid, block, dyn_smem, args...): arguments convert to the kernel's
// parameter types at the call, as with <<<>>>; runs synchronously.
template <class... P, class... A>
void launch(void (*k)(P...), dim3 grid, dim3 block, size_t dyn_smem, A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "emu::launch: wrong number of kernel arguments");
  std::tuple<std::decay_t<P>...> packed(std::forward<A>(args)...);
  const std::function<void()> body = [&packed, k]() { std::apply(k, packed); };
  run_grid(grid, block, dyn_smem, reinterpret_cast<const void*>(k), body);
}

inline void* dyn_smem() { return tl_ctx->dyn_smem; }

// ------------------------------------------------------------------ barriers
inline void syncthreads(const char* file, int line) {
  BlockCtx& c = *tl_ctx;
  Fiber& f = *c.cur;
  f.state = St::AtBarrier;
  f.bar_file = file;
  f.bar_line = line;
  if (++c.at_barrier == c.live) release_block_barrier(c);
  switch_to_scheduler();
  if (!c.error.empty()) fail(c.error);
}

// Publishes `bytes` of `in` in this lane's slot and waits until every lane of `mask` did the
// same; returns the warp and the bank holding everybody's data.
struct Collective { Warp* w; int bank; int lane; unsigned long long id; };

inline Collective warp_collective(unsigned mask, const void* in, size_t bytes) {
  BlockCtx& c = *tl_ctx;
  Fiber& f = *c.cur;
  const int lane = f.tid & 31;
  const int wbase = f.tid & ~31;
  Warp& w = c.warps[f.tid >> 5];
  if (!((mask >> lane) & 1u)) fail("warp collective: the calling lane is not in its mask");
  const int bank = f.bank;
  f.bank ^= 1;
  if (bytes) std::memcpy(w.slot[bank][lane], in, bytes);
  f.state = St::AtWarp;
  f.warp_mask = mask;
  w.arrived |= 1u << lane;
  if ((w.arrived & mask) == mask) {
    const unsigned long long id = ++w.completed;
    for (int l = 0; l < 32; ++l) {
      if (!((mask >> l) & 1u)) continue;
      if (wbase + l >= c.nthreads) fail("warp collective: mask names a lane beyond the block");
      Fiber& g = c.fibers[wbase + l];
      if (g.warp_mask != mask) fail("warp collective: lanes use different masks");
      g.state = St::Ready;
      g.coll_bank = bank;
      g.coll_id = id;
    }
    w.arrived &= ~mask;
  }
  switch_to_scheduler();
  if (!c.error.empty()) fail(c.error);
  return Collective{&w, f.coll_bank, lane, f.coll_id};
}

template <class T>
inline T slot_value(const Collective& k, int lane) {
  T v;
  std::memcpy(&v, k.w->slot[k.bank][lane], sizeof(T));
  return v;
}

// Runs compute(slots, result) once per completed collective and warp; every lane gets the
// shared result buffer.
template <class F>
inline const unsigned char* once_per_warp(const Collective& k, F&& compute) {
  Warp& w = *k.w;
  if (w.result_id[k.bank] != k.id) {
    compute(w.slot[k.bank], w.result[k.bank]);
    w.result_id[k.bank] = k.id;
  }
  return w.result[k.bank];
}

// ------------------------------------------------------------------ cp.async queue
inline void run_cp_ops(Fiber& f, int upto_group) {
  size_t keep = 0;
  for (size_t i = 0; i < f.cp.size(); ++i) {
    CpOp& op = f.cp[i];
    if (op.group < upto_group) {
      unsigned char tmp[16] = {0};
      if (op.src_bytes > 0) std::memcpy(tmp, op.src, (size_t)op.src_bytes);
      std::memcpy(op.dst, tmp, 16);
    } else {
      f.cp[keep++] = op;
    }
  }
  f.cp.resize(keep);
}

inline Fiber& current_fiber() { return *tl_ctx->cur; }

}  // namespace emu

// ------------------------------------------------------------------ CUDA device API
#define __syncthreads() ::emu::syncthreads(__FILE__, __LINE__)

inline void __syncwarp(unsigned mask = 0xffffffffu) { emu::warp_collective(mask, nullptr, 0); }

template <class T>
inline T __shfl_sync(unsigned mask, T var, int src, int width = warpSize) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= emu::kSlotBytes, "shfl type");
  const emu::Collective k = emu::warp_collective(mask, &var, sizeof(T));
  const int s = (k.lane & ~(width - 1)) + (src & (width - 1));
  return emu::slot_value<T>(k, s);
}

template <class T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= emu::kSlotBytes, "shfl type");
  const emu::Collective k = emu::warp_collective(mask, &var, sizeof(T));
  int s = k.lane ^ lane_mask;
  if ((s ^ k.lane) & ~(width - 1)) s = k.lane;   // outside the lane's segment: own value
  return emu::slot_value<T>(k, s);
}

template <class T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= emu::kSlotBytes, "shfl type");
  const emu::Collective k = emu::warp_collective(mask, &var, sizeof(T));
  const int pos = k.lane & (width - 1);
  const int s = pos + (int)delta < width ? k.lane + (int)delta : k.lane;
  return emu::slot_value<T>(k, s);
}

template <class T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= emu::kSlotBytes, "shfl type");
  const emu::Collective k = emu::warp_collective(mask, &var, sizeof(T));
  const int pos = k.lane & (width - 1);
  const int s = pos >= (int)delta ? k.lane - (int)delta : k.lane;
  return emu::slot_value<T>(k, s);
}

inline unsigned __ballot_sync(unsigned mask, int pred) {
  const int p = pred != 0;
  const emu::Collective k = emu::warp_collective(mask, &p, sizeof p);
  unsigned r = 0;
  for (int l = 0; l < 32; ++l)
    if (((mask >> l) & 1u) && emu::slot_value<int>(k, l)) r |= 1u << l;
  return r;
}
inline int __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0; }
inline int __all_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) == mask; }

// Atomics: relaxed std::atomic_ref (blocks run concurrently on the workers).
template <class T>
inline T atomicAdd(T* p, T v) {
  return std::atomic_ref<T>(*p).fetch_add(v, std::memory_order_relaxed);
}
template <class T>
inline T atomicExch(T* p, T v) {
  return std::atomic_ref<T>(*p).exchange(v, std::memory_order_relaxed);
}
template <class T>
inline T atomicCAS(T* p, T expected, T desired) {
  std::atomic_ref<T>(*p).compare_exchange_strong(expected, desired, std::memory_order_relaxed);
  return expected;
}
template <class T>
inline T atomicMax(T* p, T v) {
  std::atomic_ref<T> a(*p);
  T old = a.load(std::memory_order_relaxed);
  while (old < v && !a.compare_exchange_weak(old, v, std::memory_order_relaxed)) {}
  return old;
}
template <class T>
inline T atomicMin(T* p, T v) {
  std::atomic_ref<T> a(*p);
  T old = a.load(std::memory_order_relaxed);
  while (v < old && !a.compare_exchange_weak(old, v, std::memory_order_relaxed)) {}
  return old;
}

template <class T>
inline T __ldg(const T* p) { return *p; }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }
