// SPDX-License-Identifier: AGPL-3.0-or-later
//
// The server's memory, shared by every session: storages are charged here
// at what they really cost (their bytes plus the bookkeeping each storage
// carries), so no mix of sessions, storages or kernels can take the process
// past it. Each session also has a limit of its own (ExecutorOptions).
#pragma once

#include <atomic>
#include <cstdint>

namespace mycelya {

// What one storage costs beyond its bytes: the StorageImpl, the executor's
// map entry and the allocator's header (measured at about 475 bytes).
constexpr uint64_t kStorageOverheadBytes = 512;

class MemoryBudget {
 public:
  explicit MemoryBudget(uint64_t limit_bytes) : limit_(limit_bytes) {}
  MemoryBudget(const MemoryBudget&) = delete;
  MemoryBudget& operator=(const MemoryBudget&) = delete;

  // Takes `bytes` if they fit, all or nothing; never wraps around.
  bool try_charge(uint64_t bytes) {
    uint64_t used = used_.load(std::memory_order_relaxed);
    do {
      if (bytes > limit_ || used > limit_ - bytes) return false;
    } while (!used_.compare_exchange_weak(used, used + bytes, std::memory_order_relaxed));
    return true;
  }
  void release(uint64_t bytes) { used_.fetch_sub(bytes, std::memory_order_relaxed); }

  // Whether `bytes` more would fit now (a check before allocating, not a promise).
  bool fits(uint64_t bytes) const {
    const uint64_t used = used_.load(std::memory_order_relaxed);
    return bytes <= limit_ && used <= limit_ - bytes;
  }
  uint64_t used() const { return used_.load(std::memory_order_relaxed); }
  uint64_t limit() const { return limit_; }

 private:
  const uint64_t limit_;
  std::atomic<uint64_t> used_{0};
};

}  // namespace mycelya
