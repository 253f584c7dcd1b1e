// SPDX-License-Identifier: AGPL-3.0-or-later
//
// A session's device events (torch.Event, wire::RecordEvent), by the IDs its
// client chose. Recording happens in command order, so an event marks every
// op before it: on a GPU it is a CUDA event on the device's current stream
// (its timing the GPU's own), on a CPU device, where ops finish as they run,
// the time the executor reached it.
#pragma once

#include <c10/core/Device.h>
#include <c10/core/Event.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <unordered_map>

namespace mycelya {

class SessionEvents {
 public:
  // Events one session may hold at once: IDs come from the client.
  static constexpr size_t kMaxEvents = 1 << 16;

  // Records (or records again) `id` on `device`. Throws c10::Error past
  // kMaxEvents.
  void record(uint64_t id, c10::Device device, bool timing);
  void destroy(uint64_t id);
  // Whether the work before the record is done; an unknown ID (never
  // recorded) is done, as an unrecorded CUDA event is.
  bool done(uint64_t id);
  // Milliseconds from `start`'s record to `end`'s; both must be recorded on
  // one device with timing, and be done (on a GPU this waits for `end`).
  double elapsed_ms(uint64_t start, uint64_t end);
  size_t size() const { return events_.size(); }

 private:
  struct Recorded {
    c10::Device device;
    bool timing;
    std::chrono::steady_clock::time_point at;  // on a CPU device
    std::unique_ptr<c10::Event> cuda;          // on a GPU
  };
  const Recorded& find(uint64_t id, const char* what) const;

  std::unordered_map<uint64_t, Recorded> events_;
};

}  // namespace mycelya
