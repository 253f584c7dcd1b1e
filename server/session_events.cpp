// SPDX-License-Identifier: AGPL-3.0-or-later
#include "server/session_events.h"

#include <c10/core/impl/VirtualGuardImpl.h>
#include <c10/util/Exception.h>

namespace mycelya {

void SessionEvents::record(uint64_t id, c10::Device device, bool timing) {
  TORCH_CHECK(events_.count(id) || events_.size() < kMaxEvents, "a session may hold at most ",
              kMaxEvents, " events; destroy ones no longer used");
  Recorded recorded{device, timing, std::chrono::steady_clock::now(), nullptr};
  if (device.is_cuda()) {
    // BACKEND_DEFAULT is a CUDA event that keeps time; PYTORCH_DEFAULT one that does not.
    recorded.cuda = std::make_unique<c10::Event>(
        c10::kCUDA, timing ? c10::EventFlag::BACKEND_DEFAULT : c10::EventFlag::PYTORCH_DEFAULT);
    recorded.cuda->record(c10::impl::VirtualGuardImpl(c10::kCUDA).getStream(device));
  }
  events_.insert_or_assign(id, std::move(recorded));
}

void SessionEvents::destroy(uint64_t id) { events_.erase(id); }

const SessionEvents::Recorded& SessionEvents::find(uint64_t id, const char* what) const {
  const auto found = events_.find(id);
  TORCH_CHECK(found != events_.end(), what, " was never recorded (or was destroyed)");
  return found->second;
}

bool SessionEvents::done(uint64_t id) {
  const auto found = events_.find(id);
  if (found == events_.end()) return true;
  return !found->second.cuda || found->second.cuda->query();
}

double SessionEvents::elapsed_ms(uint64_t start, uint64_t end) {
  const Recorded& first = find(start, "elapsed_time's start event");
  const Recorded& last = find(end, "elapsed_time's end event");
  TORCH_CHECK(first.timing && last.timing,
              "elapsed_time needs both events made with enable_timing=True");
  TORCH_CHECK(first.device == last.device, "elapsed_time needs both events on one device, not ",
              first.device, " and ", last.device);
  if (first.cuda) {
    last.cuda->synchronize();
    return first.cuda->elapsedTime(*last.cuda);
  }
  return std::chrono::duration<double, std::milli>(last.at - first.at).count();
}

}  // namespace mycelya
