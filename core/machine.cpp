// SPDX-License-Identifier: AGPL-3.0-or-later
#include "core/machine.h"

#include <c10/core/ScalarType.h>
#include <c10/util/ScopeExit.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>

#include "core/generator.h"
#include "core/joined_names.h"
#include "core/logging.h"
#include "core/payload_pool.h"
#include "core/plugin_loader.h"
#include "core/start_progress.h"
#include "proto/random_key.h"

namespace mycelya {
namespace {

std::string make_machine_id(const std::string& provider) {
  static std::atomic<uint64_t> counter{0};
  char suffix[32];
  std::snprintf(suffix, sizeof(suffix), "-%d-%llu", static_cast<int>(getpid()),
                static_cast<unsigned long long>(++counter));
  return provider + suffix;
}

std::string describe(const wire::Error& error) {
  if (error.op_name().empty()) return error.message();
  return "Remote op " + error.op_name() + " failed: " + error.message();
}

// Bigger downloads stream in chunks (the stream's path is the one tuned for
// bandwidth); a read ahead of the queue is for values like loss.item().
constexpr size_t kMaxEarlyReadBytes = 1 << 20;

size_t ref_nbytes(const wire::TensorRef& ref) {
  size_t numel = 1;
  for (const int64_t size : ref.sizes()) numel *= static_cast<size_t>(size);
  return numel * c10::elementSize(static_cast<c10::ScalarType>(ref.dtype()));
}

// 256 random bits, as 64 hex digits: the name of the machine's paused state.
MachineSpec with_state_key(MachineSpec spec) {
  spec.state_key = random_hex(32, "the machine's state key");
  return spec;
}

bool synchronous_mode() {
  const char* env = std::getenv("MYCELYA_SYNC");
  return env && *env && std::string(env) != "0";
}

}  // namespace

Machine::Machine(std::string provider, MachineSpec spec)
    : provider_(std::move(provider)),
      spec_(with_state_key(std::move(spec))),
      id_(make_machine_id(provider_)),
      synchronous_(synchronous_mode()) {}

Machine::~Machine() {
  try {
    stop();
  } catch (...) {
    // Destructors must not throw; a lost machine has nothing left to stop.
  }
}

void Machine::start() {
  if (paused()) return resume();
  std::lock_guard<std::mutex> lifecycle(lifecycle_mu_);
  std::vector<DeviceRef> entries;
  {
    std::lock_guard<std::mutex> submit(submit_mu_);
    if (!start_session_submit_locked(&entries)) return;
  }
  adopt_as_current_if_unset(entries);
  try {
    // Outside submit_mu_: seeding queues commands, which MYCELYA_SYNC=1 waits for.
    start_default_generators(entries);
  } catch (...) {
    stop_lifecycle_locked();
    throw;
  }
}

bool Machine::start_session_submit_locked(std::vector<DeviceRef>* started) {
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    if (running_) return false;
  }
  Provider& provider = load_provider(provider_);
  TerminalStartProgress progress("starting machine " + id_ + " on " + provider_);
  std::shared_ptr<Session> session = provider.start(spec_, progress);
  progress.finished();
  std::vector<std::string> devices = session->devices();
  std::vector<DeviceRef> entries;
  try {
    entries = register_machine(shared_from_this(), devices);
  } catch (...) {
    session->stop();
    throw;
  }
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    devices_ = std::move(devices);
    entries_ = entries;
  }
  attach_session_lifecycle_locked(std::move(session));
  *started = std::move(entries);
  return true;
}

void Machine::attach_session_lifecycle_locked(std::shared_ptr<Session> session) {
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    session_ = std::move(session);
    running_ = true;
    paused_ = false;
    stopping_ = false;
    lost_.clear();
    // A new session knows no op names yet, and counts commands from 1.
    queue_.reset();
    session_reads_early_ = true;
  }
  sender_ = std::thread([this] { sender_loop(); });
}

std::shared_ptr<Session> Machine::detach_session_lifecycle_locked(bool pause) {
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    stopping_ = true;
  }
  queue_cv_.notify_all();
  room_cv_.notify_all();
  if (sender_.joinable()) sender_.join();
  std::lock_guard<std::mutex> submit(submit_mu_);
  std::lock_guard<std::mutex> lock(queue_mu_);
  running_ = false;
  if (pause) {
    // In the same step as running_, so no free falls between the two.
    paused_ = true;
    lost_.clear();
    for (const uint64_t id : queue_.take_storage_frees()) frees_while_paused_.push_back(id);
    sent_before_pause_ = queue_.sent();
  }
  queue_.reset();
  return std::move(session_);
}

void Machine::stop() {
  std::lock_guard<std::mutex> lifecycle(lifecycle_mu_);
  stop_lifecycle_locked();
}

void Machine::stop_lifecycle_locked() {
  bool was_paused = false;
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    if (!running_ && !paused_) return;
    was_paused = paused_;
  }
  const std::shared_ptr<Session> session =
      was_paused ? nullptr : detach_session_lifecycle_locked(/*pause=*/false);
  std::vector<DeviceRef> entries;
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    paused_ = false;
    frees_while_paused_.clear();
    entries = std::move(entries_);
    entries_.clear();
  }
  // From here the machine's tensors raise "not running", and its indices
  // can go to the next machine.
  release_machine(entries);
  stop_default_generators(entries);
  log_info("stopping machine " + id_);
  if (session) end_session(*session, &Session::stop);
  load_provider(provider_).discard(spec_);
}

void Machine::end_session(Session& session, void (Session::*end)()) {
  // A read beside the queue returns or fails once the session has ended
  // (Session's contract); it uses this machine until then.
  const auto wait_for_reads = c10::make_scope_exit([this] {
    std::unique_lock<std::mutex> lock(queue_mu_);
    early_reads_cv_.wait(lock, [this] { return early_reads_in_flight_ == 0; });
  });
  (session.*end)();
}

void Machine::pause() {
  std::lock_guard<std::mutex> lifecycle(lifecycle_mu_);
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    if (paused_) return;
    if (!running_) {
      throw std::runtime_error("Machine " + id_ + " is not running: nothing to pause.");
    }
    if (!lost_.empty()) throw std::runtime_error(lost_);
    if (!session_->can_pause()) {
      throw std::runtime_error("Machine " + id_ + ": provider " + provider_ +
                               " cannot pause machines; stop() ends them.");
    }
  }
  const auto done = hold_other_threads();
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
    if (lost_.empty()) throw;
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
    if (!paused_) {
      if (!running_) {
        throw std::runtime_error("Machine " + id_ +
                                 " is not paused: it stopped, and start() starts it anew.");
      }
      if (lost_.empty()) return;
      // Lost: a server that stopped by itself (--idle-timeout) saved the
      // storages first, and a new one can take them back.
      lost = true;
    }
    devices_when_paused = devices_;
  }
  const auto done = hold_other_threads();
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
    throw std::runtime_error("Could not resume machine " + id_ + ": it offers [" + joined_names(devices) +
                             "] now but offered [" + joined_names(devices_when_paused) + "]" +
                             " when it paused, so its tensors would land on other devices." +
                             still_paused);
  }
  uint64_t sent_before_pause = 0;
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    sent_before_pause = sent_before_pause_;
  }
  attach_session_lifecycle_locked(std::move(session));
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

c10::scope_exit<std::function<void()>> Machine::hold_other_threads() {
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    transitioning_ = true;
  }
  return c10::make_scope_exit(std::function<void()>([this] {
    {
      std::lock_guard<std::mutex> lock(queue_mu_);
      transitioning_ = false;
    }
    room_cv_.notify_all();
  }));
}

void Machine::resume_if_paused(const char* what) {
  // On every op's path: one atomic load while the machine runs.
  if (!paused_.load(std::memory_order_acquire)) return;
  log_info("machine " + id_ + " is paused; resuming it to " + what);
  resume();
}

bool Machine::paused() const { return paused_.load(std::memory_order_acquire); }

std::vector<uint64_t> Machine::unsaved_storages() const {
  std::lock_guard<std::mutex> lock(queue_mu_);
  return unsaved_storages_;
}

bool Machine::running() const {
  std::lock_guard<std::mutex> lock(queue_mu_);
  return running_ && lost_.empty();
}

std::vector<std::string> Machine::devices() const {
  std::lock_guard<std::mutex> lock(queue_mu_);
  return devices_;
}

int Machine::slot_of(const std::string& type, int index) const {
  const std::string wanted = type + ":" + std::to_string(index);
  std::lock_guard<std::mutex> lock(queue_mu_);
  for (size_t i = 0; i < devices_.size(); ++i) {
    // "cpu" is served as "cpu" and also answers to "cpu:0".
    if (devices_[i] == wanted || (devices_[i] == type && index == 0)) return static_cast<int>(i);
  }
  throw std::invalid_argument("Machine " + id_ + " has no device " + wanted +
                              "; it offers: " + joined_names(devices_) + ".");
}

c10::DeviceIndex Machine::device_index(int slot) const {
  std::lock_guard<std::mutex> lock(queue_mu_);
  if ((!running_ && !paused_) || slot < 0 || slot >= static_cast<int>(entries_.size())) {
    throw std::runtime_error("Machine " + id_ + " is not running; call start() first.");
  }
  return entries_[slot]->index;
}

void Machine::check_usable_queue_locked(const DeviceEntry* device) const {
  if (device) check_running(*device);
  if (!lost_.empty()) throw std::runtime_error(lost_);
  if (paused_) {
    throw std::runtime_error("Machine " + id_ + " is paused; machine.resume() resumes it.");
  }
  if (!running_ || stopping_) {
    throw std::runtime_error("Machine " + id_ +
                             " is not running; call machine.start() before using its tensors.");
  }
}

void Machine::wait_for_room_queue_locked(std::unique_lock<std::mutex>& lock,
                                         const DeviceEntry* device) {
  room_cv_.wait(lock, [this] {
    const bool full =
        queue_.queued_commands() >= kMaxQueuedCommands || queue_.queued_bytes() >= kMaxQueuedBytes;
    // Held while another thread pauses or resumes the machine.
    return (!full && !transitioning_) || !lost_.empty() || !running_ || stopping_;
  });
  check_usable_queue_locked(device);
}

std::optional<uint64_t> Machine::read_after_queue_locked(const wire::Request& request) const {
  if (!session_reads_early_ || !request.has_download() ||
      ref_nbytes(request.download().source()) > kMaxEarlyReadBytes) {
    return std::nullopt;
  }
  return queue_.last_mention(request.download().source().storage_id());
}

void Machine::enqueue(wire::Command* command, const DeviceEntry* device) {
  resume_if_paused("run an op");
  {
    std::unique_lock<std::mutex> lock(queue_mu_);
    wait_for_room_queue_locked(lock, device);
    queue_.append(command);
  }
  queue_cv_.notify_one();
  if (synchronous_) synchronize();
}

void Machine::enqueue_upload(wire::Upload upload, std::string payload, const DeviceEntry* device) {
  wire::Command command;
  *command.mutable_upload() = std::move(upload);
  enqueue_with_payload(std::move(command), std::move(payload), device);
}

void Machine::enqueue_with_payload(wire::Command command, std::string payload,
                                   const DeviceEntry* device) {
  resume_if_paused("send it data");
  {
    std::unique_lock<std::mutex> lock(queue_mu_);
    wait_for_room_queue_locked(lock, device);
    if (command.has_upload()) bytes_uploaded_ += payload.size();
    queue_.append_with_payload(&command, std::move(payload));
  }
  queue_cv_.notify_one();
  if (synchronous_) synchronize();
}

void Machine::seed_generator(const wire::GeneratorRef& generator, uint64_t seed,
                             const DeviceEntry* device) {
  wire::Command command;
  command.mutable_seed()->set_seed(seed);
  *command.mutable_seed()->mutable_generator() = generator;
  enqueue(&command, device);
}

std::string Machine::generator_state(const wire::GeneratorRef& generator, uint64_t* seed,
                                     const DeviceEntry* device) {
  wire::Request request;
  *request.mutable_rng_state()->mutable_generator() = generator;
  std::string state;
  wire::Response response = this->request(std::move(request), &state, device);
  *seed = response.seed();
  return state;
}

void Machine::set_generator_state(const wire::GeneratorRef& generator, std::string state,
                                  const DeviceEntry* device) {
  wire::Command command;
  *command.mutable_set_rng_state()->mutable_generator() = generator;
  command.mutable_set_rng_state()->set_nbytes(state.size());
  enqueue_with_payload(std::move(command), std::move(state), device);
}

void Machine::free_storage(uint64_t storage_id) {
  std::lock_guard<std::mutex> lock(queue_mu_);
  // Freed at the resume: a tensor going away is no reason to resume, and a
  // lost machine may be resumed with the storage.
  if (paused_ || (running_ && !lost_.empty())) {
    frees_while_paused_.push_back(storage_id);
    return;
  }
  if (!running_) return;
  queue_.free_storage(storage_id);
}

void Machine::free_generator(uint64_t generator_id) {
  std::lock_guard<std::mutex> lock(queue_mu_);
  if (!running_ || !lost_.empty()) return;
  queue_.free_generator(generator_id);
}

void Machine::flush_submit_locked() {
  EncodedBatch batch;
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    batch = queue_.take_batch();
    if (batch.batch.empty()) return;
    if (!lost_.empty()) throw std::runtime_error(lost_);
    ++batches_sent_;
  }
  room_cv_.notify_all();
  try {
    session_->submit(batch);
    for (auto& payload : batch.payloads) payload_pool().release(std::move(payload));
  } catch (const std::exception& e) {
    std::lock_guard<std::mutex> lock(queue_mu_);
    throw_lost_queue_locked(e.what());
  }
}

void Machine::mark_lost_queue_locked(const std::string& why) {
  // The first failure is the cause; a later one (another thread's call to
  // the same broken session) is its consequence.
  if (lost_.empty()) lost_ = "Machine " + id_ + " was lost: " + why;
  room_cv_.notify_all();  // waiters for room see it now
}

void Machine::throw_lost_queue_locked(const std::string& why) {
  mark_lost_queue_locked(why);
  throw std::runtime_error(lost_);
}

void Machine::sender_loop() {
  while (true) {
    {
      std::unique_lock<std::mutex> lock(queue_mu_);
      queue_cv_.wait(lock, [this] { return stopping_ || queue_.has_commands(); });
    }
    try {
      std::lock_guard<std::mutex> submit(submit_mu_);
      // Gathering only once the machine can take the batch lets the ops
      // recorded while it was busy travel in this batch, not wait for the next.
      session_->wait_until_ready();
      flush_submit_locked();
    } catch (const std::exception& e) {
      // Callers see why at their next call.
      log_info(std::string("sender stopped: ") + e.what());
      std::lock_guard<std::mutex> lock(queue_mu_);
      mark_lost_queue_locked(e.what());
      return;
    }
    std::lock_guard<std::mutex> lock(queue_mu_);
    if (stopping_ && !queue_.has_commands()) return;
  }
}

bool Machine::read_early(wire::Request& request, std::string* payload, std::string* response,
                         const DeviceEntry* device) {
  std::shared_ptr<Session> session;
  uint64_t after_command = 0;
  {
    std::unique_lock<std::mutex> lock(queue_mu_);
    check_usable_queue_locked(device);
    const std::optional<uint64_t> read_after = read_after_queue_locked(request);
    if (!read_after) return false;
    after_command = *read_after;
    session = session_;
    if (after_command > queue_.sent()) {
      // The source's last command is still queued: send the queue first.
      lock.unlock();
      {
        std::lock_guard<std::mutex> submit(submit_mu_);
        flush_submit_locked();
      }
      lock.lock();
      check_usable_queue_locked(device);
      // Command numbers count within one session.
      if (session != session_) {
        throw std::runtime_error("Machine " + id_ + " was restarted while a read from it waited.");
      }
    }
    // Queued commands that do not mention the source stay queued. No
    // submit_mu_ from here: the sender may ship them while this waits.
    ++early_reads_in_flight_;
  }
  bool answered = false;
  bool failed = false;
  std::string error;
  {
    // However read_after ends, stop() must learn that this read is over.
    const auto done = c10::make_scope_exit([this] {
      std::lock_guard<std::mutex> lock(queue_mu_);
      if (--early_reads_in_flight_ == 0) early_reads_cv_.notify_all();
    });
    try {
      answered = session->read_after(request.SerializeAsString(), after_command, response, payload);
    } catch (const std::exception& e) {
      failed = true;
      error = e.what();
    }
  }
  std::lock_guard<std::mutex> lock(queue_mu_);
  if (answered) {
    ++round_trips_;
    ++early_reads_;
    return true;
  }
  if (session != session_) {
    throw std::runtime_error("Machine " + id_ + " was stopped while a read from it waited.");
  }
  if (failed) throw_lost_queue_locked(error);
  session_reads_early_ = false;  // the session cannot: every read goes in order
  return false;
}

wire::Response Machine::request(wire::Request request, std::string* payload,
                                const DeviceEntry* device) {
  resume_if_paused("answer a sync point");
  std::string encoded_response;
  if (!read_early(request, payload, &encoded_response, device)) {
    std::lock_guard<std::mutex> submit(submit_mu_);
    {
      std::lock_guard<std::mutex> lock(queue_mu_);
      check_usable_queue_locked(device);
    }
    flush_submit_locked();
    {
      std::lock_guard<std::mutex> lock(queue_mu_);
      ++round_trips_;
      // Interned after the batch it follows, so a name is sent before its number.
      if (request.has_execute()) queue_.intern(request.mutable_execute()->mutable_op());
    }
    try {
      encoded_response = session_->request(request.SerializeAsString(), payload);
    } catch (const std::exception& e) {
      std::lock_guard<std::mutex> lock(queue_mu_);
      throw_lost_queue_locked(e.what());
    }
  }
  wire::Response response;
  if (!response.ParseFromString(encoded_response)) {
    throw std::runtime_error("Machine " + id_ + " sent a response that could not be decoded.");
  }
  if (response.has_pending_error()) throw std::runtime_error(describe(response.pending_error()));
  if (response.has_error()) throw std::runtime_error(describe(response.error()));
  return response;
}

void Machine::synchronize() {
  wire::Request sync;
  sync.mutable_sync();
  request(std::move(sync));
}

uint64_t Machine::batches_sent() const {
  std::lock_guard<std::mutex> lock(queue_mu_);
  return batches_sent_;
}

uint64_t Machine::round_trips() const {
  std::lock_guard<std::mutex> lock(queue_mu_);
  return round_trips_;
}

uint64_t Machine::early_reads() const {
  std::lock_guard<std::mutex> lock(queue_mu_);
  return early_reads_;
}

uint64_t Machine::bytes_uploaded() const {
  std::lock_guard<std::mutex> lock(queue_mu_);
  return bytes_uploaded_;
}

size_t Machine::tracked_storages() const {
  std::lock_guard<std::mutex> lock(queue_mu_);
  return queue_.mentioned_storages();
}

size_t Machine::interned_ops() const {
  std::lock_guard<std::mutex> lock(queue_mu_);
  return queue_.interned_ops();
}

}  // namespace mycelya
