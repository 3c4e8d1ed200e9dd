// Shared allocation of large CPU kernel outputs (loss gradients, attention outputs and
// gradients): a cache of already-mapped blocks, optionally on transparent huge pages.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <iterator>
#include <map>
#include <mutex>
#include <utility>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace janus_cpu {

// Environment switches; each also answers to its older JANUS_LOSS_* name.
inline const char* pool_env(const char* name, const char* legacy) {
  const char* e = std::getenv(name);
  return e ? e : std::getenv(legacy);
}

// Fresh multi-MiB outputs come from mmap; with 4 KiB pages their first touch (page faults +
// kernel zeroing) can cost as much as the kernel itself (the rows are first touched by the
// parallel loop, so both threads fault). With JANUS_POOL_THP=1 the 2 MiB-aligned interior is
// advised to use transparent huge pages, which cut that cost ~4x on a quiet machine. It is
// opt-in because with THP defrag=madvise (a common default) the first faults may stall in
// direct compaction: measured 4-6 s for 1 GB on a fragmented, busy host.
inline bool use_thp() {
  static const bool on = [] {
    const char* e = pool_env("JANUS_POOL_THP", "JANUS_LOSS_THP");
    return e && e[0] == '1';
  }();
  return on;
}

// Output pool. A fresh multi-MiB output costs page faults plus kernel zeroing on its first
// touch, about as much as the kernel itself: 4096 x 32000 fp32 symmetric KL fwd+bwd measured
// 120 ms kernel, 258 ms with two fresh gradient tensors; the IWSLT-shaped attention backward
// (B=64, H=8, d=64: dq/dk/dv 21 MB) 8 ms on one thread, 17 ms whenever glibc handed it fresh
// mmap'd blocks (~5000 faults per call). Large outputs of the loss and attention kernels
// therefore come from a small cache of mapped blocks: when such an output is freed its block
// is kept (its pages stay mapped) and handed to the next request of a similar size, as CUDA's
// caching allocator does for device memory. The cache holds at most JANUS_POOL_MB MiB
// (default 2048; 0 turns it off); janus_kernels.empty_cache() unmaps what it holds.
class OutputPool {
 public:
  static OutputPool& get() {
    static OutputPool* pool = new OutputPool();  // never destroyed: deleters may run at exit
    return *pool;
  }
  // A block of at least `bytes` (its capacity in *cap); nullptr when mapping fails.
  void* take(size_t bytes, size_t* cap) {
    // blocks are whole 2 MiB units; a cached block is reused when it is at most 25% (and at
    // least one unit) larger than the rounded request, so repeated shapes find their blocks
    constexpr size_t kUnit = size_t(2) << 20;
    const size_t want = (bytes + kUnit - 1) / kUnit * kUnit;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.lower_bound(want);
      if (it != free_.end() && it->first <= want + std::max(kUnit, want / 4)) {
        void* p = it->second;
        *cap = it->first;
        cached_ -= it->first;
        free_.erase(it);
        return p;
      }
    }
#if defined(__linux__)
    *cap = want;
    void* p = mmap(nullptr, *cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return nullptr;
#if defined(MADV_HUGEPAGE)
    if (use_thp()) madvise(p, *cap, MADV_HUGEPAGE);
#endif
    return p;
#else
    (void)bytes; (void)cap;
    return nullptr;
#endif
  }
  void give(void* p, size_t cap) {
    std::vector<std::pair<size_t, void*>> drop;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (cap <= limit_) {
        while (cached_ + cap > limit_ && !free_.empty()) {  // evict the largest blocks first
          auto last = std::prev(free_.end());
          drop.push_back(*last);
          cached_ -= last->first;
          free_.erase(last);
        }
        free_.emplace(cap, p);
        cached_ += cap;
      } else {
        drop.emplace_back(cap, p);
      }
    }
    for (auto& [n, q] : drop) unmap(q, n);
  }
  size_t clear() {
    std::vector<std::pair<size_t, void*>> drop;
    {
      std::lock_guard<std::mutex> lock(mu_);
      drop.assign(free_.begin(), free_.end());
      free_.clear();
      cached_ = 0;
    }
    size_t n = 0;
    for (auto& [c, q] : drop) {
      unmap(q, c);
      n += c;
    }
    return n;
  }
  bool enabled() const { return limit_ > 0; }

 private:
  OutputPool() {
    const char* e = pool_env("JANUS_POOL_MB", "JANUS_LOSS_POOL_MB");
    limit_ = (e ? size_t(std::max(0L, std::strtol(e, nullptr, 10))) : size_t(2048)) << 20;
  }
  static void unmap(void* p, size_t n) {
#if defined(__linux__)
    munmap(p, n);
#else
    (void)p; (void)n;
#endif
  }
  std::mutex mu_;
  std::multimap<size_t, void*> free_;
  size_t cached_ = 0, limit_ = 0;
};

// An uninitialised tensor of `sizes`; from the pool when it has >= min_bytes (CPU only).
inline at::Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& opt,
                               size_t min_bytes) {
  size_t bytes = at::elementSize(at::typeMetaToScalarType(opt.dtype()));
  for (int64_t s : sizes) bytes *= size_t(s);
  OutputPool& pool = OutputPool::get();
  if (bytes >= min_bytes && pool.enabled() && opt.device().is_cpu()) {
    size_t cap = 0;
    if (void* p = pool.take(bytes, &cap))
      return at::from_blob(p, sizes, [cap](void* q) { OutputPool::get().give(q, cap); }, opt);
  }
  return at::empty(sizes, opt);
}

}  // namespace janus_cpu
