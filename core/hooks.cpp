// SPDX-License-Identifier: AGPL-3.0-or-later
//
// PrivateUse1 hooks and the backend's name, registered by
// core/registration.cpp.
#include <ATen/detail/PrivateUse1HooksInterface.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <c10/core/impl/alloc_cpu.h>

#include "core/allocator.h"
#include "core/device_table.h"
#include "core/generator.h"
#include "core/pinned_allocator.h"
#include "core/registration.h"

namespace mycelya {
namespace {

struct RemoteHooks final : public at::PrivateUse1HooksInterface {
  bool isBuilt() const override { return true; }
  bool isAvailable() const override { return true; }
  bool hasPrimaryContext(c10::DeviceIndex) const override { return true; }
  void init() const override {}

  c10::DeviceIndex deviceCount() const override { return kMaxDevices; }

  c10::Device getDeviceFromPtr(void*) const override {
    return c10::impl::getDeviceGuardImpl(c10::DeviceType::PrivateUse1)->getDevice();
  }

  // Pinned host memory is ordinary memory that is_pinned() knows (core/pinned_allocator.h).
  bool isPinnedPtr(const void* data) const override { return is_pinned_pointer(data); }
  c10::Allocator* getPinnedMemoryAllocator() const override { return pinned_memory_allocator(); }

  const at::Generator& getDefaultGenerator(c10::DeviceIndex device) const override {
    return default_generator(device);
  }

  at::Generator getNewGenerator(c10::DeviceIndex device) const override {
    return new_generator(device);
  }

  void resizePrivateUse1Bytes(const c10::Storage&, size_t) const override {
    TORCH_CHECK_NOT_IMPLEMENTED(false, "resize mycelya tensors with Tensor.resize_().");
  }
};

}  // namespace

void register_backend_hooks() {
  c10::register_privateuse1_backend("mycelya");
  static RemoteHooks hooks;
  at::RegisterPrivateUse1HooksInterface(&hooks);
}

}  // namespace mycelya
