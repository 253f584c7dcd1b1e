// SPDX-License-Identifier: AGPL-3.0-or-later
#include "core/allocator.h"

#include <c10/core/CachingDeviceAllocator.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <c10/util/Exception.h>

#include <atomic>

#include "core/machine.h"

namespace mycelya {
namespace {

struct StorageOwner {
  uint64_t id;
  DeviceRef entry;
};

void free_storage(void* ctx) {
  auto* owner = static_cast<StorageOwner*>(ctx);
  // A stopped machine's session took its storages along.
  if (!owner->entry->stopped.load(std::memory_order_relaxed)) {
    try {
      owner->entry->machine->free_storage(owner->id);
    } catch (...) {
      // A deleter must not throw; the session frees the storage when it ends.
    }
  }
  delete owner;
}

// Fills one torch Stat (all pools, the aggregate) from the machine's numbers.
void set_stat(c10::CachingAllocator::StatArray& stats, uint64_t current, uint64_t peak,
              uint64_t allocated, uint64_t freed) {
  auto& stat = stats[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)];
  stat.current = static_cast<int64_t>(current);
  stat.peak = static_cast<int64_t>(peak);
  stat.allocated = static_cast<int64_t>(allocated);
  stat.freed = static_cast<int64_t>(freed);
}

// The machine's numbers for mycelya device `index` (one round trip).
wire::DeviceMemory device_memory(c10::DeviceIndex index, bool reset_peaks = false) {
  const DeviceRef entry = lookup_device(index);
  const Machine::MemoryStats stats = entry->machine->memory_stats(reset_peaks);
  TORCH_CHECK(entry->slot < static_cast<int>(stats.devices.size()), "machine ",
              entry->machine->id(), " reported no memory for its ", entry->remote_name,
              " (a server older than this client)");
  return stats.devices[entry->slot];
}

// A DeviceAllocator, so that torch.accelerator's memory functions (and
// torch.mycelya's, which call them) report the machine's allocator: CUDA's
// caching allocator on a GPU, the session's storages on a cpu device.
class RemoteAllocator final : public c10::DeviceAllocator {
 public:
  bool initialized() override { return true; }

  // The client caches nothing; the machine's allocator is asked to.
  void emptyCache(c10::MempoolId_t /*mempool_id*/) override {
    const auto index =
        c10::impl::getDeviceGuardImpl(c10::DeviceType::PrivateUse1)->getDevice().index();
    const DeviceRef entry = lookup_device(index);
    entry->machine->empty_cache();
  }

  // One stream per device: a storage is never reused while queued work uses it.
  void recordStream(const c10::DataPtr& /*ptr*/, c10::Stream /*stream*/) override {}

  c10::CachingDeviceAllocator::DeviceStats getDeviceStats(c10::DeviceIndex index) override {
    const wire::DeviceMemory memory = device_memory(index);
    c10::CachingDeviceAllocator::DeviceStats stats;
    set_stat(stats.allocated_bytes, memory.allocated(), memory.peak_allocated(),
             memory.allocated_total(), memory.freed_total());
    set_stat(stats.active_bytes, memory.allocated(), memory.peak_allocated(),
             memory.allocated_total(), memory.freed_total());
    set_stat(stats.requested_bytes, memory.allocated(), memory.peak_allocated(),
             memory.allocated_total(), memory.freed_total());
    set_stat(stats.reserved_bytes, memory.reserved(), memory.peak_reserved(), memory.reserved(), 0);
    return stats;
  }

  void resetAccumulatedStats(c10::DeviceIndex /*index*/) override {
    TORCH_CHECK_NOT_IMPLEMENTED(false,
                                "mycelya keeps its machines' cumulative memory counts; "
                                "reset_peak_memory_stats() resets the peaks");
  }

  void resetPeakStats(c10::DeviceIndex index) override { device_memory(index, true); }

  std::pair<size_t, size_t> getMemoryInfo(c10::DeviceIndex index) override {
    const wire::DeviceMemory memory = device_memory(index);
    return {memory.free_memory(), memory.total_memory()};
  }

  c10::DataPtr allocate(size_t /*nbytes*/) override {
    const auto device =
        c10::impl::getDeviceGuardImpl(c10::DeviceType::PrivateUse1)->getDevice().index();
    // Refuses a device no running machine owns.
    return make_storage_data_ptr(next_storage_id(), lookup_device(device));
  }

  c10::DeleterFnPtr raw_deleter() const override { return nullptr; }

  void copy_data(void*, const void*, std::size_t) const override {
    TORCH_CHECK(false, "mycelya storages hold no local bytes; copy tensors instead of storages.");
  }
};

}  // namespace

uint64_t next_storage_id() {
  static std::atomic<uint64_t> next{1};
  return next.fetch_add(1, std::memory_order_relaxed);
}

c10::DataPtr make_storage_data_ptr(uint64_t id, DeviceRef entry) {
  const c10::Device device(c10::DeviceType::PrivateUse1, entry->index);
  return c10::DataPtr(reinterpret_cast<void*>(id), new StorageOwner{id, std::move(entry)},
                      &free_storage, device);
}

const DeviceRef& storage_device(const c10::Storage& storage) {
  const c10::DataPtr& data = storage.data_ptr();
  TORCH_CHECK(data.get_deleter() == &free_storage,
              "this mycelya storage was not made by mycelya's allocator");
  const DeviceRef& entry = static_cast<const StorageOwner*>(data.get_context())->entry;
  check_running(*entry);
  return entry;
}

c10::Allocator* remote_allocator() {
  static RemoteAllocator allocator;
  return &allocator;
}

}  // namespace mycelya
