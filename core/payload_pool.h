// SPDX-License-Identifier: AGPL-3.0-or-later
//
// Buffers for payloads, handed out again once done with: an upload's after its
// batch is sent, a download's when the CPU tensor that adopted it dies. A fresh multi-megabyte
// buffer is a fresh mmap whose every page faults on first write: that cost as much as the transfer
// itself for a 256 MiB upload. Buffers under kMinPooledBytes are left to malloc.
#pragma once

#include <cstddef>
#include <mutex>
#include <string>
#include <vector>

namespace mycelya {

class PayloadPool {
 public:
  static constexpr size_t kMinPooledBytes = 1 << 20;

  // `max_bytes`: the most this pool keeps while no upload uses it.
  explicit PayloadPool(size_t max_bytes) : max_bytes_(max_bytes) {}

  // A buffer of `size` bytes; its contents are unspecified.
  std::string acquire(size_t size);
  // Takes a buffer back for a later acquire(), or frees it.
  void release(std::string buffer);

  size_t pooled_bytes() const;

 private:
  mutable std::mutex mu_;
  std::vector<std::string> free_;
  size_t pooled_bytes_ = 0;
  const size_t max_bytes_;
};

// The process's pool for uploads and downloads: keeps at most 512 MiB.
PayloadPool& payload_pool();

}  // namespace mycelya
