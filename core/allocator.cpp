// SPDX-License-Identifier: AGPL-3.0-or-later
#include "core/allocator.h"

#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <c10/util/Exception.h>

#include <atomic>

#include "core/device_table.h"

namespace mycelya {
namespace {

struct StorageOwner {
  uint64_t id;
  c10::DeviceIndex device;
};

void free_storage(void* ctx) {
  auto* owner = static_cast<StorageOwner*>(ctx);
  try {
    lookup_device(owner->device).machine->free_storage(owner->id);
  } catch (...) {
    // The device table outlives tensors except at process exit; nothing to free then.
  }
  delete owner;
}

class RemoteAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t /*nbytes*/) override {
    const auto device =
        c10::impl::getDeviceGuardImpl(c10::DeviceType::PrivateUse1)->getDevice().index();
    lookup_device(device);  // refuses a device no machine owns
    return make_storage_data_ptr(next_storage_id(), device);
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

c10::DataPtr make_storage_data_ptr(uint64_t id, c10::DeviceIndex device) {
  return c10::DataPtr(reinterpret_cast<void*>(id), new StorageOwner{id, device}, &free_storage,
                      c10::Device(c10::DeviceType::PrivateUse1, device));
}

c10::Allocator* remote_allocator() {
  static RemoteAllocator allocator;
  return &allocator;
}

REGISTER_ALLOCATOR(c10::DeviceType::PrivateUse1, remote_allocator());

}  // namespace mycelya
