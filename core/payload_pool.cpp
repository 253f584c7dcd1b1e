// SPDX-License-Identifier: AGPL-3.0-or-later
#include "core/payload_pool.h"

#include <utility>

namespace mycelya {

std::string PayloadPool::acquire(size_t size) {
  if (size >= kMinPooledBytes) {
    std::lock_guard<std::mutex> lock(mu_);
    // The smallest buffer that fits, unless it would waste more than half of
    // itself; among equals the newest, whose pages are likeliest still cached.
    size_t best = free_.size();
    for (size_t i = 0; i < free_.size(); ++i) {
      const size_t capacity = free_[i].capacity();
      if (capacity >= size && capacity / 2 <= size &&
          (best == free_.size() || capacity <= free_[best].capacity())) {
        best = i;
      }
    }
    if (best != free_.size()) {
      std::string buffer = std::move(free_[best]);
      free_.erase(free_.begin() + static_cast<std::ptrdiff_t>(best));
      pooled_bytes_ -= buffer.capacity();
      // Within the capacity, whose pages an earlier upload already touched.
      buffer.resize(size);
      return buffer;
    }
  }
  std::string buffer;
  buffer.resize(size);
  return buffer;
}

void PayloadPool::release(std::string buffer) {
  if (buffer.capacity() < kMinPooledBytes || buffer.capacity() > max_bytes_) return;
  std::lock_guard<std::mutex> lock(mu_);
  // Drop the oldest buffers until this one fits.
  while (!free_.empty() && pooled_bytes_ + buffer.capacity() > max_bytes_) {
    pooled_bytes_ -= free_.front().capacity();
    free_.erase(free_.begin());
  }
  pooled_bytes_ += buffer.capacity();
  free_.push_back(std::move(buffer));
}

size_t PayloadPool::pooled_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return pooled_bytes_;
}

PayloadPool& payload_pool() {
  static PayloadPool pool(size_t{512} << 20);
  return pool;
}

}  // namespace mycelya
