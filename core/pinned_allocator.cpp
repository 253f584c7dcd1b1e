// SPDX-License-Identifier: AGPL-3.0-or-later
#include "core/pinned_allocator.h"

#include <c10/core/CPUAllocator.h>

#include <cstdint>
#include <map>
#include <mutex>

namespace mycelya {
namespace {

class PinnedAllocator final : public c10::Allocator {
 public:
  static PinnedAllocator& instance();

  c10::DataPtr allocate(size_t nbytes) override {
    c10::DataPtr block = c10::GetCPUAllocator()->allocate(nbytes);
    void* data = block.get();
    if (data == nullptr) return block;  // nothing to remember of an empty block
    auto* owned = new c10::DataPtr(std::move(block));
    {
      std::lock_guard<std::mutex> lock(mu_);
      blocks_[reinterpret_cast<uintptr_t>(data)] = nbytes;
    }
    return {data, owned, &PinnedAllocator::release, c10::Device(c10::kCPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return nullptr; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  bool holds(const void* ptr) {
    const auto address = reinterpret_cast<uintptr_t>(ptr);
    std::lock_guard<std::mutex> lock(mu_);
    auto after = blocks_.upper_bound(address);
    if (after == blocks_.begin()) return false;
    const auto& [start, size] = *std::prev(after);
    return address < start + size;
  }

 private:
  static void release(void* context) {
    auto* block = static_cast<c10::DataPtr*>(context);
    instance().forget(block->get());
    delete block;
  }

  void forget(const void* data) {
    std::lock_guard<std::mutex> lock(mu_);
    blocks_.erase(reinterpret_cast<uintptr_t>(data));
  }

  std::mutex mu_;
  std::map<uintptr_t, size_t> blocks_;  // start -> bytes
};

PinnedAllocator& PinnedAllocator::instance() {
  // Never destroyed: tensors may outlive static destruction at exit.
  static auto* allocator = new PinnedAllocator();
  return *allocator;
}

}  // namespace

c10::Allocator* pinned_memory_allocator() { return &PinnedAllocator::instance(); }

bool is_pinned_pointer(const void* ptr) { return PinnedAllocator::instance().holds(ptr); }

}  // namespace mycelya
