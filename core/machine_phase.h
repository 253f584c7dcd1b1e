// SPDX-License-Identifier: AGPL-3.0-or-later
//
// The lifecycle of a Machine (core/machine.h), as one phase. Every check of
// the machine's state asks the phase; only Machine::set_phase_queue_locked
// changes it, and only along the moves listed here:
//
//   from       to          by
//   ---------  ----------  -----------------------------------------------
//   kStopped   kRunning    start(): a session attached
//   kRunning   kPausing    pause(): its save under way, other threads held
//   kPausing   kRunning    pause() failed with the machine still running
//   kPaused    kResuming   resume(): a new session attached, restore under way
//   kResuming  kRunning    resume() restored the storages
//   kRunning,  kLost       the session failed (a send, a request, a read)
//   kPausing,
//   kResuming,
//   kStopping
//   kRunning,  kStopping   stop(), pause() or resume() detach the session:
//   kPausing,              the sender sends what is queued, then ends
//   kResuming
//   kStopping, kStopped    stop(): the session detached (lost, perhaps,
//   kLost                  while the sender sent the last of the queue)
//   kStopping, kPaused     pause(), or a resume that failed or took back a
//   kLost                  lost machine: the session detached
//   kPaused    kStopped    stop() of a paused machine
//
// kLost is left only by detaching, straight to kStopped or kPaused (its
// sender has ended already, and its reason stays what every use raises until
// then): stop() ends the machine, resume() takes back a server that saved
// its storages before it stopped by itself.
#pragma once

namespace mycelya {

enum class MachinePhase {
  kStopped,   // no session, no device indices
  kRunning,   // a session takes commands
  kPausing,   // pause() saves the storages; only its own requests go through
  kResuming,  // resume() restores them into a new session; likewise
  kStopping,  // the sender sends what is queued, then ends
  kLost,      // the session failed; every use raises why
  kPaused,    // no session; the device indices and the saved state stay
};

const char* phase_name(MachinePhase phase);

// Whether the move is one of the table's.
bool phase_move_allowed(MachinePhase from, MachinePhase to);

// A session is attached: the sender may be alive and the device indices are held.
inline bool has_session(MachinePhase phase) {
  return phase != MachinePhase::kStopped && phase != MachinePhase::kPaused;
}

// Commands and requests are taken (those of other threads wait out a pause
// or resume: see holds_other_threads).
inline bool takes_commands(MachinePhase phase) {
  return phase == MachinePhase::kRunning || phase == MachinePhase::kPausing ||
         phase == MachinePhase::kResuming;
}

// A pause or resume is under way: other threads' ops wait for room until it ends.
inline bool holds_other_threads(MachinePhase phase) {
  return phase == MachinePhase::kPausing || phase == MachinePhase::kResuming;
}

// The sender has nothing more to do once the queue is empty.
inline bool sender_ends(MachinePhase phase) {
  return phase == MachinePhase::kStopping || phase == MachinePhase::kLost;
}

}  // namespace mycelya
