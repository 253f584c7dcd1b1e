// SPDX-License-Identifier: AGPL-3.0-or-later
#include "core/device_events.h"

#include <c10/util/Exception.h>

#include <atomic>

#include "core/machine.h"

namespace mycelya {
namespace {

std::atomic<uint64_t> next_event_id{1};

wire::Response ask(const RemoteEvent& event, const RemoteEvent* end) {
  wire::Request request;
  request.mutable_event()->set_event_id(event.id);
  if (end) {
    request.mutable_event()->set_end_event_id(end->id);
    request.mutable_event()->set_elapsed(true);
  }
  return event.device->machine->request(std::move(request), nullptr, event.device.get());
}

// The machine forgets the event; nothing to do once the machine went away
// (it took its events along).
void drop_remote_copy(const RemoteEvent& event) noexcept {
  try {
    if (event.device && !event.device->stopped && event.device->machine->running()) {
      wire::Command command;
      command.mutable_destroy_event()->set_event_id(event.id);
      event.device->machine->enqueue(&command, event.device.get());
    }
  } catch (...) {
  }
}

}  // namespace

void record_event(RemoteEvent** event, c10::DeviceIndex index, bool timing) {
  DeviceRef device = lookup_device(index);
  if (!*event) *event = new RemoteEvent{next_event_id++, nullptr, timing};
  RemoteEvent& recorded = **event;
  // Recorded again elsewhere: the old device's machine drops its copy.
  if (recorded.device && recorded.device->machine != device->machine) drop_remote_copy(recorded);
  wire::Command command;
  command.mutable_record_event()->set_event_id(recorded.id);
  command.mutable_record_event()->set_device(device->slot);
  command.mutable_record_event()->set_timing(recorded.timing);
  device->machine->enqueue(&command, device.get());
  recorded.device = std::move(device);
}

bool event_done(const RemoteEvent* event) {
  if (!event || !event->device) return true;
  return ask(*event, nullptr).event_done();
}

void synchronize_event(const RemoteEvent* event) {
  if (!event || !event->device) return;
  check_running(*event->device);
  event->device->machine->synchronize();
}

double event_elapsed_ms(const RemoteEvent* start, const RemoteEvent* end) {
  TORCH_CHECK(start && start->device && end && end->device,
              "elapsed_time needs both events recorded first (Event.record())");
  TORCH_CHECK(start->timing && end->timing,
              "elapsed_time needs both events made with enable_timing=True");
  TORCH_CHECK(start->device == end->device, "elapsed_time needs both events on one device, not ",
              "mycelya:", static_cast<int>(start->device->index),
              " and mycelya:", static_cast<int>(end->device->index));
  return ask(*start, end).elapsed_ms();
}

void destroy_event(RemoteEvent* event) noexcept {
  if (!event) return;
  drop_remote_copy(*event);
  delete event;
}

}  // namespace mycelya
