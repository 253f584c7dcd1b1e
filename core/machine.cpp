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
#include "proto/remote_error.h"

namespace mycelya {
namespace {

std::string make_machine_id(const std::string& provider) {
  static std::atomic<uint64_t> counter{0};
  char suffix[32];
  std::snprintf(suffix, sizeof(suffix), "-%d-%llu", static_cast<int>(getpid()),
                static_cast<unsigned long long>(++counter));
  return provider + suffix;
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
    if (phase_ != MachinePhase::kStopped) return false;
  }
  Provider& provider = load_provider(provider_);
  TerminalStartProgress progress("starting machine " + id_ + " on " + provider_);
  std::shared_ptr<Session> session = provider.start(spec_, progress);
  progress.finished();
  std::vector<std::string> devices = session->devices();
  std::vector<DeviceRef> entries;
  try {
    entries = register_machine(shared_from_this(), devices, session->device_properties());
  } catch (...) {
    session->stop();
    throw;
  }
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    devices_ = std::move(devices);
    entries_ = entries;
  }
  attach_session_lifecycle_locked(std::move(session), MachinePhase::kRunning);
  *started = std::move(entries);
  return true;
}

void Machine::set_phase_queue_locked(MachinePhase to) {
  const MachinePhase from = phase_.load(std::memory_order_relaxed);
  if (!phase_move_allowed(from, to)) {
    throw std::logic_error("Machine " + id_ + ": no move from " + phase_name(from) + " to " +
                           phase_name(to) + " (core/machine_phase.h)");
  }
  if (from == MachinePhase::kLost) lost_reason_.clear();
  phase_.store(to, std::memory_order_release);
  // The sender waits for a phase that ends it, enqueue for one that lets it on.
  queue_cv_.notify_all();
  room_cv_.notify_all();
}

void Machine::attach_session_lifecycle_locked(std::shared_ptr<Session> session, MachinePhase to) {
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    session_ = std::move(session);
    set_phase_queue_locked(to);
    // A new session knows no op names yet, and counts commands from 1.
    queue_.reset();
    session_reads_early_ = true;
  }
  sender_ = std::thread([this] { sender_loop(); });
}

std::shared_ptr<Session> Machine::detach_session_lifecycle_locked(bool pause) {
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    // Lost already: the sender has ended, or ends at its next look.
    if (phase_ != MachinePhase::kLost) set_phase_queue_locked(MachinePhase::kStopping);
  }
  if (sender_.joinable()) sender_.join();
  std::lock_guard<std::mutex> submit(submit_mu_);
  std::lock_guard<std::mutex> lock(queue_mu_);
  set_phase_queue_locked(pause ? MachinePhase::kPaused : MachinePhase::kStopped);
  if (pause) {
    // In the same step as the phase, so no free falls between the two.
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
    if (phase_ == MachinePhase::kStopped) return;
    was_paused = phase_ == MachinePhase::kPaused;
  }
  const std::shared_ptr<Session> session =
      was_paused ? nullptr : detach_session_lifecycle_locked(/*pause=*/false);
  std::vector<DeviceRef> entries;
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    if (was_paused) set_phase_queue_locked(MachinePhase::kStopped);
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

bool Machine::running() const {
  std::lock_guard<std::mutex> lock(queue_mu_);
  const MachinePhase phase = phase_;
  return has_session(phase) && phase != MachinePhase::kLost;
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
  if (phase_ == MachinePhase::kStopped || slot < 0 || slot >= static_cast<int>(entries_.size())) {
    throw std::runtime_error("Machine " + id_ + " is not running; call start() first.");
  }
  return entries_[slot]->index;
}

void Machine::check_usable_queue_locked(const DeviceEntry* device) const {
  if (device) check_running(*device);
  const MachinePhase phase = phase_;
  if (phase == MachinePhase::kLost) throw std::runtime_error(lost_reason_);
  if (phase == MachinePhase::kPaused) {
    throw std::runtime_error("Machine " + id_ + " is paused; machine.resume() resumes it.");
  }
  if (!takes_commands(phase)) {
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
    const MachinePhase phase = phase_;
    return (!full && !holds_other_threads(phase)) || !takes_commands(phase);
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
  const MachinePhase phase = phase_;
  if (phase == MachinePhase::kPaused || phase == MachinePhase::kLost) {
    frees_while_paused_.push_back(storage_id);
    return;
  }
  if (!has_session(phase)) return;
  queue_.free_storage(storage_id);
}

void Machine::free_generator(uint64_t generator_id) {
  std::lock_guard<std::mutex> lock(queue_mu_);
  const MachinePhase phase = phase_;
  if (!has_session(phase) || phase == MachinePhase::kLost) return;
  queue_.free_generator(generator_id);
}

void Machine::flush_submit_locked() {
  EncodedBatch batch;
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    batch = queue_.take_batch();
    if (batch.batch.empty()) return;
    if (phase_ == MachinePhase::kLost) throw std::runtime_error(lost_reason_);
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
  // With no session (stopped or paused meanwhile) there is nothing to lose.
  if (phase_ == MachinePhase::kLost || !has_session(phase_)) return;
  set_phase_queue_locked(MachinePhase::kLost);  // waiters for room see it now
  lost_reason_ = "Machine " + id_ + " was lost: " + why;
}

void Machine::throw_lost_queue_locked(const std::string& why) {
  mark_lost_queue_locked(why);
  if (phase_ == MachinePhase::kLost) throw std::runtime_error(lost_reason_);
  throw std::runtime_error("Machine " + id_ + " was lost: " + why);
}

void Machine::sender_loop() {
  while (true) {
    {
      std::unique_lock<std::mutex> lock(queue_mu_);
      queue_cv_.wait(lock, [this] { return sender_ends(phase_) || queue_.has_commands(); });
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
    if (sender_ends(phase_) && !queue_.has_commands()) return;
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
  if (response.has_pending_error())
    throw std::runtime_error(remote_error_text(response.pending_error()));
  if (response.has_error()) throw std::runtime_error(remote_error_text(response.error()));
  return response;
}

void Machine::synchronize() {
  wire::Request sync;
  sync.mutable_sync();
  request(std::move(sync));
}

Machine::MemoryStats Machine::memory_stats(bool reset_peaks) {
  wire::Request request;
  request.mutable_stats()->set_reset_peaks(reset_peaks);
  const wire::SessionStats stats = this->request(std::move(request)).stats();
  MemoryStats result;
  result.storages = stats.storages();
  result.bytes_in_use = stats.bytes_in_use();
  result.generators = stats.generators();
  result.memory_limit = stats.memory_limit();
  result.tracked_storages = tracked_storages();
  result.interned_ops = interned_ops();
  result.devices.assign(stats.devices().begin(), stats.devices().end());
  return result;
}

void Machine::empty_cache() {
  wire::Request request;
  request.mutable_stats()->set_empty_cache(true);
  this->request(std::move(request));
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
