// SPDX-License-Identifier: AGPL-3.0-or-later
//
// Device guard for PrivateUse1, the one holder of the current device: the
// device module's current_device()/set_device()/device(...) and
// torch.accelerator all read and write it, per thread as CUDA's is. There
// are no streams or events on the client: ordering is the order ops enter
// the machine's queue.
//
// setDevice accepts any index below kMaxDevices, running machine or not: the
// autograd engine sets each of its per-device worker threads to its index at
// start. An index that names no running machine fails where it is used.
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include "core/device_table.h"
#include "core/machine.h"
#include "core/registration.h"

namespace mycelya {
namespace {

thread_local c10::DeviceIndex current_device = 0;

struct RemoteGuardImpl final : public c10::impl::DeviceGuardImplInterface {
  static constexpr c10::DeviceType kType = c10::DeviceType::PrivateUse1;

  c10::DeviceType type() const override { return kType; }

  c10::Device exchangeDevice(c10::Device device) const override {
    auto old = getDevice();
    if (device.index() != current_device) setDevice(device);
    return old;
  }

  c10::Device getDevice() const override { return c10::Device(kType, current_device); }

  void setDevice(c10::Device device) const override {
    TORCH_CHECK(device.type() == kType, "expected a mycelya device, got ", device);
    // -1 is a device without an index: the current one stays.
    if (device.index() != -1) current_device = checked_device_index(device.index());
  }

  void uncheckedSetDevice(c10::Device device) const noexcept override {
    if (device.index() >= 0 && device.index() < kMaxDevices) current_device = device.index();
  }

  c10::Stream getStream(c10::Device device) const override {
    return c10::Stream(c10::Stream::DEFAULT, device);
  }

  c10::Stream exchangeStream(c10::Stream stream) const override {
    return c10::Stream(c10::Stream::DEFAULT, stream.device());
  }

  c10::DeviceIndex deviceCount() const noexcept override { return kMaxDevices; }

  // torch.accelerator.synchronize(): waits for every op queued for the
  // device's machine, as machine.synchronize() does (errors of earlier ops
  // raise here). The one stream is the device's queue.
  void synchronizeDevice(const c10::DeviceIndex index) const override {
    lookup_device(index)->machine->synchronize();
  }
  void synchronizeStream(const c10::Stream& stream) const override {
    synchronizeDevice(stream.device_index());
  }
};

}  // namespace

c10::impl::DeviceGuardImplInterface* new_guard_impl() { return new RemoteGuardImpl(); }

}  // namespace mycelya
