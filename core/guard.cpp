// SPDX-License-Identifier: AGPL-3.0-or-later
//
// Device guard for PrivateUse1, the one holder of the current device: the
// device module's current_device()/set_device()/device(...) and
// torch.accelerator all read and write it, per thread as CUDA's is.
//
// Streams: each device has the default stream (ID 0) and any number made by
// torch.Stream / torch.mycelya.Stream, and each thread a current stream per
// device, as with CUDA. Every stream of a device runs its work in one order,
// the order ops enter the machine's queue: a stream's work is ordered as
// CUDA orders it (and more), so waiting on another stream needs nothing
// further. Events (core/device_events.h) live on the machine.
//
// setDevice accepts any index below kMaxDevices, running machine or not: the
// autograd engine sets each of its per-device worker threads to its index at
// start. An index that names no running machine fails where it is used.
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <array>
#include <atomic>

#include "core/device_events.h"
#include "core/device_table.h"
#include "core/machine.h"
#include "core/registration.h"

namespace mycelya {
namespace {

thread_local c10::DeviceIndex current_device = 0;
// This thread's current stream of each device (0, the default, when unset).
thread_local std::array<c10::StreamId, kMaxDevices> current_streams{};
// The last stream made on each device; streams are never reused.
std::array<std::atomic<c10::StreamId>, kMaxDevices> last_stream_ids{};

RemoteEvent* as_event(void* event) { return static_cast<RemoteEvent*>(event); }

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
    device = with_index(device);
    return c10::Stream(c10::Stream::UNSAFE, device, current_streams[device.index()]);
  }

  c10::Stream getDefaultStream(c10::Device device) const override {
    return c10::Stream(c10::Stream::DEFAULT, with_index(device));
  }

  c10::Stream getNewStream(c10::Device device, int /*priority*/) const override {
    device = with_index(device);
    return c10::Stream(c10::Stream::UNSAFE, device, ++last_stream_ids[device.index()]);
  }

  c10::Stream getStreamFromGlobalPool(c10::Device device, bool /*high_priority*/) const override {
    return getNewStream(device, 0);
  }

  c10::Stream exchangeStream(c10::Stream stream) const override {
    const c10::Device device = with_index(stream.device());
    const c10::Stream old = getStream(device);
    current_streams[device.index()] = stream.id();
    return old;
  }

  // A stream's work is done once the machine has run everything queued for it.
  bool queryStream(const c10::Stream& stream) const override {
    synchronizeStream(stream);
    return true;
  }

  void record(void** event, const c10::Stream& stream, const c10::DeviceIndex device_index,
              const c10::EventFlag flag) const override {
    const c10::DeviceIndex index = device_index >= 0 ? device_index : stream.device_index();
    // BACKEND_DEFAULT is what torch.Event(enable_timing=True) asks for.
    record_event(reinterpret_cast<RemoteEvent**>(event), index,
                 flag == c10::EventFlag::BACKEND_DEFAULT);
  }

  // Streams of a device share its one order, and of different machines meet
  // only through this process, which waits for a tensor it moves.
  void block(void* /*event*/, const c10::Stream& /*stream*/) const override {}

  bool queryEvent(void* event) const override { return event_done(as_event(event)); }

  void synchronizeEvent(void* event) const override { synchronize_event(as_event(event)); }

  double elapsedTime(void* start, void* end, const c10::DeviceIndex /*index*/) const override {
    return event_elapsed_ms(as_event(start), as_event(end));
  }

  void destroyEvent(void* event, const c10::DeviceIndex /*index*/) const noexcept override {
    destroy_event(as_event(event));
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

 private:
  // `device` with the current device's index when it has none.
  static c10::Device with_index(c10::Device device) {
    return c10::Device(kType,
                       device.has_index() ? checked_device_index(device.index()) : current_device);
  }
};

}  // namespace

c10::impl::DeviceGuardImplInterface* new_guard_impl() { return new RemoteGuardImpl(); }

}  // namespace mycelya
