// SPDX-License-Identifier: AGPL-3.0-or-later
//
// torch.Event on a mycelya device: the event lives on the machine
// (server/session_events.h), named by an ID this process chooses. Recording
// is queued like an op; query and elapsed_time ask the machine (one round
// trip, after every op queued before them); synchronize waits for the
// machine. The device guard (core/guard.cpp) hands these to torch.
#pragma once

#include <c10/core/Device.h>

#include <cstdint>

#include "core/device_table.h"

namespace mycelya {

struct RemoteEvent {
  uint64_t id;
  DeviceRef device;  // null until recorded
  bool timing = false;
};

// Records `event` (made if null) on the device `index`, after every op queued for it.
void record_event(RemoteEvent** event, c10::DeviceIndex index, bool timing);
// Whether the work before the record is done (true when never recorded).
bool event_done(const RemoteEvent* event);
// Waits until the work before the record is done.
void synchronize_event(const RemoteEvent* event);
// Milliseconds between two recorded events of one device, timed on the machine.
double event_elapsed_ms(const RemoteEvent* start, const RemoteEvent* end);
// Drops the machine's copy (if its machine still runs) and frees `event`.
void destroy_event(RemoteEvent* event) noexcept;

}  // namespace mycelya
