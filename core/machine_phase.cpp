// SPDX-License-Identifier: AGPL-3.0-or-later
#include "core/machine_phase.h"

namespace mycelya {

const char* phase_name(MachinePhase phase) {
  switch (phase) {
    case MachinePhase::kStopped:
      return "stopped";
    case MachinePhase::kRunning:
      return "running";
    case MachinePhase::kPausing:
      return "pausing";
    case MachinePhase::kResuming:
      return "resuming";
    case MachinePhase::kStopping:
      return "stopping";
    case MachinePhase::kLost:
      return "lost";
    case MachinePhase::kPaused:
      return "paused";
  }
  return "unknown";
}

// The table in core/machine_phase.h, row by row.
bool phase_move_allowed(MachinePhase from, MachinePhase to) {
  using P = MachinePhase;
  switch (to) {
    case P::kRunning:
      return from == P::kStopped || from == P::kPausing || from == P::kResuming;
    case P::kPausing:
      return from == P::kRunning;
    case P::kResuming:
      return from == P::kPaused;
    case P::kLost:
      return from == P::kRunning || from == P::kPausing || from == P::kResuming ||
             from == P::kStopping;
    case P::kStopping:
      return from == P::kRunning || from == P::kPausing || from == P::kResuming;
    case P::kStopped:
      return from == P::kStopping || from == P::kLost || from == P::kPaused;
    case P::kPaused:
      return from == P::kStopping || from == P::kLost;
  }
  return false;
}

}  // namespace mycelya
