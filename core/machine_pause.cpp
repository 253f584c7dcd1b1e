// SPDX-License-Identifier: AGPL-3.0-or-later
//
// Machine::pause and Machine::resume (core/machine.h): a pause saves every
// storage through the session and detaches it, keeping the device indices;
// a resume attaches a new session and restores them. Their phases and moves
// are in core/machine_phase.h.
#include <c10/util/ScopeExit.h>

#include <stdexcept>

#include "core/joined_names.h"
#include "core/logging.h"
#include "core/machine.h"
#include "core/plugin_loader.h"
#include "core/start_progress.h"

namespace mycelya {

void Machine::pause() {
  std::lock_guard<std::mutex> lifecycle(lifecycle_mu_);
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    const MachinePhase phase = phase_;
    if (phase == MachinePhase::kPaused) return;
    if (phase == MachinePhase::kLost) throw std::runtime_error(lost_reason_);
    if (phase != MachinePhase::kRunning) {
      throw std::runtime_error("Machine " + id_ + " is not running: nothing to pause.");
    }
    if (!session_->can_pause()) {
      throw std::runtime_error("Machine " + id_ + ": provider " + provider_ +
                               " cannot pause machines; stop() ends them.");
    }
    set_phase_queue_locked(MachinePhase::kPausing);
  }
  const auto done = c10::make_scope_exit([this] { end_hold(); });
  log_info("pausing machine " + id_ + ": saving its storages");
  wire::Request save;
  save.mutable_save_state();
  wire::Response response;
  std::string cut_short;  // why the save did not finish, if the machine was lost
  try {
    response = request(std::move(save));
  } catch (const std::exception& e) {
    std::lock_guard<std::mutex> lock(queue_mu_);
    // An earlier op's error, or a server that cannot pause: still running.
    if (phase_ != MachinePhase::kLost) throw;
    cut_short = e.what();
  }
  const std::shared_ptr<Session> session = detach_session_lifecycle_locked(/*pause=*/true);
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    unsaved_storages_.clear();
  }
  end_session(*session, &Session::pause);
  if (!cut_short.empty()) {
    throw std::runtime_error(cut_short +
                             " (while pausing). What it saved is kept: resume() restores it, and "
                             "machine.unsaved_storages then names the storages it could not save.");
  }
  log_info("machine " + id_ + " paused: " + std::to_string(response.state().storage_ids_size()) +
           " storages saved (" + std::to_string(response.state().bytes()) + " bytes)");
}

void Machine::resume() {
  std::lock_guard<std::mutex> lifecycle(lifecycle_mu_);
  std::vector<std::string> devices_when_paused;
  bool lost = false;
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    const MachinePhase phase = phase_;
    if (phase == MachinePhase::kStopped) {
      throw std::runtime_error("Machine " + id_ +
                               " is not paused: it stopped, and start() starts it anew.");
    }
    if (phase == MachinePhase::kRunning) return;
    // Lost: a server that stopped by itself (--idle-timeout) saved the
    // storages first, and a new one can take them back.
    lost = phase == MachinePhase::kLost;
    devices_when_paused = devices_;
  }
  // Other threads' ops wait in resume_if_paused (for lifecycle_mu_) until
  // the new session is attached, and then for the restore (kResuming).
  const auto done = c10::make_scope_exit([this] { end_hold(); });
  if (lost) {
    const std::shared_ptr<Session> session = detach_session_lifecycle_locked(/*pause=*/true);
    if (session) end_session(*session, &Session::pause);
  }
  const std::string still_paused =
      " It stays paused, its saved storages kept: resume() tries again, stop() drops them.";
  std::shared_ptr<Session> session;
  try {
    TerminalStartProgress progress("resuming machine " + id_ + " on " + provider_);
    session = load_provider(provider_).resume(spec_, progress);
    progress.finished();
  } catch (const std::exception& e) {
    throw std::runtime_error("Could not resume machine " + id_ + ": " + e.what() + still_paused);
  }
  const std::vector<std::string> devices = session->devices();
  if (devices != devices_when_paused) {
    session->pause();  // ends it, keeping the saved storages
    throw std::runtime_error(
        "Could not resume machine " + id_ + ": it offers [" + joined_names(devices) +
        "] now but offered [" + joined_names(devices_when_paused) + "]" +
        " when it paused, so its tensors would land on other devices." + still_paused);
  }
  uint64_t sent_before_pause = 0;
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    sent_before_pause = sent_before_pause_;
  }
  attach_session_lifecycle_locked(std::move(session), MachinePhase::kResuming);
  // Ends the new session again, the machine back to paused.
  const auto back_to_paused = [this] {
    const std::shared_ptr<Session> failed = detach_session_lifecycle_locked(/*pause=*/true);
    if (failed) end_session(*failed, &Session::pause);
  };
  wire::Request restore;
  restore.mutable_restore_state();
  wire::Response response;
  try {
    response = request(std::move(restore));
  } catch (const std::exception& e) {
    back_to_paused();
    throw std::runtime_error("Could not resume machine " + id_ +
                             ": restoring its storages failed: " + e.what() + still_paused);
  }
  const wire::StateReport& state = response.state();
  if (state.commands_run() != sent_before_pause) {
    // A machine lost with commands in flight: what its server saved is
    // older than the tensors, and reading it would give stale numbers.
    back_to_paused();
    throw std::runtime_error(
        "Could not resume machine " + id_ + ": it had been sent " +
        std::to_string(sent_before_pause) + " commands when it was lost, but its server saved " +
        "its storages after " + std::to_string(state.commands_run()) +
        " of them, so they are older than its tensors. They are gone; stop() ends the machine.");
  }
  std::vector<uint64_t> unsaved(state.missing_ids().begin(), state.missing_ids().end());
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    unsaved_storages_ = unsaved;
    // Tensors freed while paused: their storages came back, so free them.
    for (const uint64_t id : frees_while_paused_) queue_.free_storage(id);
    frees_while_paused_.clear();
  }
  queue_cv_.notify_one();
  if (!unsaved.empty()) {
    std::string ids;
    for (size_t i = 0; i < unsaved.size() && i < 20; ++i) ids += " " + std::to_string(unsaved[i]);
    log_warning("machine " + id_ + " resumed without " + std::to_string(unsaved.size()) +
                " storage(s) that its pause could not save (IDs" + ids +
                (unsaved.size() > 20 ? " ..." : "") + "); using their tensors raises");
  }
  log_info("machine " + id_ + " resumed: " + std::to_string(state.storage_ids_size()) +
           " storages restored (" + std::to_string(state.bytes()) + " bytes)");
}

void Machine::end_hold() {
  std::lock_guard<std::mutex> lock(queue_mu_);
  if (holds_other_threads(phase_)) set_phase_queue_locked(MachinePhase::kRunning);
}

void Machine::resume_if_paused(const char* what) {
  // On every op's path: one atomic load while the machine runs.
  if (phase_.load(std::memory_order_acquire) != MachinePhase::kPaused) return;
  log_info("machine " + id_ + " is paused; resuming it to " + what);
  resume();
}

bool Machine::paused() const {
  return phase_.load(std::memory_order_acquire) == MachinePhase::kPaused;
}

std::vector<uint64_t> Machine::unsaved_storages() const {
  std::lock_guard<std::mutex> lock(queue_mu_);
  return unsaved_storages_;
}

}  // namespace mycelya
