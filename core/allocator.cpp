// SPDX-License-Identifier: AGPL-3.0-or-later
#include "core/allocator.h"

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

class RemoteAllocator final : public c10::Allocator {
 public:
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
