// SPDX-License-Identifier: AGPL-3.0-or-later
//
// One remote machine as the client sees it: a provider session, the devices
// it holds in the device table while it runs, the queue of commands not yet
// sent (core/command_queue.h), and the background thread that sends them.
//
// Commands are appended without waiting; the sender thread ships whatever has
// accumulated as one batch once the session has room for it
// (Session::wait_until_ready), so a flood of small ops coalesces while the
// session's places are taken (how many, and why: kMaxBatchesInFlight in
// providers/common/grpc_session.h). Recording may run at most
// kMaxQueuedCommands ahead of the sender; beyond that, enqueue() waits, so
// memory stays bounded in a loop with no sync point. Sync points (request)
// first hand every queued command to the session, so a request always
// observes the effects of all earlier ops, except a small download where the
// session can answer early (Session::read_after): it waits only for the last
// command that mentions its source, so loss.item() returns once the forward
// pass has run, and the next step is recorded while the machine still runs
// this step's backward pass.
//
// Its lifecycle is one phase (core/machine_phase.h); pause() and resume()
// are in core/machine_pause.cpp.
//
// Three locks, taken in this order: lifecycle_mu_ makes start() and stop()
// one at a time; submit_mu_ orders everything handed to the session;
// queue_mu_ guards the queue and the state below it. Methods named
// *_queue_locked need queue_mu_ held, *_submit_locked submit_mu_.
//
// Calls made for a tensor or generator pass its device entry, checked under
// queue_mu_ after any wait: an entry stopped meanwhile (its machine stopped,
// and perhaps started again) raises "not running" rather than reach the new
// session.
#pragma once

#include <c10/core/Device.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "core/command_queue.h"
#include "core/device_table.h"
#include "core/machine_phase.h"
#include "core/provider.h"
#include "proto/mycelya.pb.h"

namespace mycelya {

// How far recording may run ahead of the machine: without a bound, a loop
// with no sync point queues steps (and keeps alive every storage they free)
// as fast as it can record them. CUDA bounds its launch queue alike.
constexpr size_t kMaxQueuedCommands = 256;
constexpr size_t kMaxQueuedBytes = 64 << 20;

// Made with std::make_shared: a started machine hands itself to the device table.
class Machine : public std::enable_shared_from_this<Machine> {
 public:
  Machine(std::string provider, MachineSpec spec);
  ~Machine();
  Machine(const Machine&) = delete;
  Machine& operator=(const Machine&) = delete;

  const std::string& id() const { return id_; }
  const std::string& provider() const { return provider_; }
  const MachineSpec& spec() const { return spec_; }

  // Starts the provider session and takes a device index for each of its
  // devices (no-op when running). Throws std::runtime_error, leaving nothing
  // running, when too few device indices are free.
  void start();
  // Sends what is queued, stops the session and the sender, and gives the
  // device indices back; the machine's tensors raise "not running" from now.
  void stop();
  bool running() const;

  // Saves every storage of the machine and ends it, so that its provider
  // bills no more, keeping its device indices: its tensors stay valid.
  // resume() starts it again with every storage back under its ID; using a
  // tensor of a paused machine resumes it (logged at INFO). A pause cut
  // short by losing the machine keeps what was saved and throws; the next
  // resume then names the storages it could not save. Throw
  // std::runtime_error; a failed resume leaves the machine paused. resume()
  // also takes back a machine lost because its server stopped by itself
  // (--idle-timeout saves the session first).
  void pause();
  void resume();
  bool paused() const;
  // Storages the last resume could not restore (their pause was cut short);
  // using one raises that it was not saved.
  std::vector<uint64_t> unsaved_storages() const;

  // Remote device names by slot, e.g. {"cuda:0", "cpu"}.
  std::vector<std::string> devices() const;
  // The slot of "type:index"; throws std::invalid_argument naming the devices offered.
  int slot_of(const std::string& type, int index) const;
  // "mycelya:k" of the device in `slot`; throws std::runtime_error when stopped.
  c10::DeviceIndex device_index(int slot) const;

  // Queues a command (encoded at once, in the caller's thread; its op name is
  // interned first, which changes *command). Waits while the queue is full.
  // Throws if the machine is stopped or lost, or `device` stopped.
  void enqueue(wire::Command* command, const DeviceEntry* device = nullptr);
  void enqueue(wire::Command command, const DeviceEntry* device = nullptr) {
    enqueue(&command, device);
  }
  // `payload` best comes from payload_pool() (core/payload_pool.h),
  // which gets it back once it is sent.
  void enqueue_upload(wire::Upload upload, std::string payload,
                      const DeviceEntry* device = nullptr);
  // Queue a free; silently dropped once the machine is stopped.
  void free_storage(uint64_t storage_id);
  void free_generator(uint64_t generator_id);

  // Answers a request once the commands queued before it have run: all of
  // them (the queue is sent first), or, for a small download the session can
  // read early, those up to the last one that mentions its source. Raises
  // std::runtime_error for a pending error of earlier ops or an error of
  // this request.
  wire::Response request(wire::Request request, std::string* payload = nullptr,
                         const DeviceEntry* device = nullptr);

  // The random generators of the session (core/generator.h): seeding and
  // setting a state are queued like ops; reading a state is a sync point,
  // which also tells the generator's seed.
  void seed_generator(const wire::GeneratorRef& generator, uint64_t seed,
                      const DeviceEntry* device);
  std::string generator_state(const wire::GeneratorRef& generator, uint64_t* seed,
                              const DeviceEntry* device);
  void set_generator_state(const wire::GeneratorRef& generator, std::string state,
                           const DeviceEntry* device);

  // Flushes and waits until every queued op has run; raises pending errors.
  void synchronize();

  // What the session holds on the machine, asked in order after every queued
  // op (a sync point), and what this process keeps for it.
  struct MemoryStats {
    uint64_t storages = 0;
    uint64_t bytes_in_use = 0;  // counted against memory_limit
    uint64_t generators = 0;    // the client's own, besides each device's default
    uint64_t memory_limit = 0;
    size_t tracked_storages = 0;              // as tracked_storages()
    size_t interned_ops = 0;                  // as interned_ops()
    std::vector<wire::DeviceMemory> devices;  // by slot
  };
  // One round trip, in stream order: after every free queued before it.
  // `reset_peaks`: each device's peak then starts again from what it holds.
  MemoryStats memory_stats(bool reset_peaks = false);
  // Asks each GPU's caching allocator to give back its unused blocks (one round trip).
  void empty_cache();

  // Batches handed to the session so far, blocking requests (round trips)
  // made, those of them answered ahead of the queue (Session::read_after),
  // and tensor bytes uploaded: for tests and benchmarks.
  uint64_t batches_sent() const;
  uint64_t round_trips() const;
  uint64_t early_reads() const;
  uint64_t bytes_uploaded() const;
  // Storages the queue remembers a last mention of, and op names it has
  // interned: for tests that memory returns to where it was.
  size_t tracked_storages() const;
  size_t interned_ops() const;

 private:
  // stop(), with lifecycle_mu_ held.
  void stop_lifecycle_locked();
  // Stops the sender and takes the session out; the caller ends it. The
  // machine is then kPaused (keeping the frees not sent yet for the resume)
  // or, without `pause`, kStopped.
  std::shared_ptr<Session> detach_session_lifecycle_locked(bool pause);
  // Moves the lifecycle to `to`, refusing (std::logic_error) a move that
  // core/machine_phase.h does not list; wakes the threads that wait on it.
  void set_phase_queue_locked(MachinePhase to);
  // Moves a pause or resume under way (kPausing, kResuming) back to
  // kRunning, once it is over however it ended: other threads' ops go on.
  void end_hold();
  // Takes `session` as the machine's own and starts the sender, in phase
  // `to` (kRunning, or kResuming while a resume restores it).
  void attach_session_lifecycle_locked(std::shared_ptr<Session> session, MachinePhase to);
  // Resumes the machine if it is paused, before a use of it (`what`).
  void resume_if_paused(const char* what);
  // Ends a detached session with `end` (Session::stop or Session::pause),
  // once reads beside the queue are over.
  void end_session(Session& session, void (Session::*end)());
  // Starts the session and takes the device indices; false when running.
  bool start_session_submit_locked(std::vector<DeviceRef>* started);
  // Queues `command` with `payload` as the batch's next payload.
  void enqueue_with_payload(wire::Command command, std::string payload, const DeviceEntry* device);
  // Waits for room in the queue, then checks the machine (and `device`) is usable.
  void wait_for_room_queue_locked(std::unique_lock<std::mutex>& lock, const DeviceEntry* device);
  void sender_loop();
  // Hands everything queued to the session.
  void flush_submit_locked();
  void check_usable_queue_locked(const DeviceEntry* device = nullptr) const;
  // Marks the session lost (kLost), keeping the first reason.
  void mark_lost_queue_locked(const std::string& why);
  // The same, then throws that reason.
  [[noreturn]] void throw_lost_queue_locked(const std::string& why);
  // The download in `request` may skip the commands after this one (0: all);
  // nullopt when it must go the ordinary way.
  std::optional<uint64_t> read_after_queue_locked(const wire::Request& request) const;
  // Answers a small download through Session::read_after, beside the queue;
  // false when it must go in order instead.
  bool read_early(wire::Request& request, std::string* payload, std::string* response,
                  const DeviceEntry* device);

  const std::string provider_;
  const MachineSpec spec_;
  const std::string id_;
  // MYCELYA_SYNC=1: every queued command is waited for, so errors raise at the op.
  const bool synchronous_;

  // Guards the queue and the state below.
  mutable std::mutex queue_mu_;
  std::condition_variable queue_cv_;  // the sender waits for commands
  std::condition_variable room_cv_;   // enqueue waits for the sender to take some
  // Shared with the reads beside the queue, which hold no lock while they wait.
  std::shared_ptr<Session> session_;
  std::vector<std::string> devices_;
  std::vector<DeviceRef> entries_;  // by slot, while running
  CommandQueue queue_;
  // The one owner of the lifecycle (core/machine_phase.h). Written under
  // queue_mu_ through set_phase_queue_locked; atomic so that every op can
  // check for a pause without the lock.
  std::atomic<MachinePhase> phase_{MachinePhase::kStopped};
  // Why the session failed: set with kLost, cleared when the phase leaves it.
  std::string lost_reason_;
  // Pause data (core/machine_pause.cpp): frees that wait for the resume, and
  // what the last resume could not restore.
  std::vector<uint64_t> frees_while_paused_;
  std::vector<uint64_t> unsaved_storages_;
  // Commands sent to the session that paused (or was lost): its save must
  // have run them all for a resume to be up to date.
  uint64_t sent_before_pause_ = 0;
  uint64_t batches_sent_ = 0;
  uint64_t round_trips_ = 0;
  uint64_t bytes_uploaded_ = 0;
  // Whether this session answers Session::read_after, learnt at the first
  // read it declines. A property of the session, not of the lifecycle: it
  // changes no phase, and each new session starts with it true.
  bool session_reads_early_ = true;
  uint64_t early_reads_ = 0;
  // Reads beside the queue still out; stop() waits for them.
  int early_reads_in_flight_ = 0;
  std::condition_variable early_reads_cv_;

  // One start() or stop() at a time.
  std::mutex lifecycle_mu_;
  // Serializes everything that talks to the session, keeping order.
  std::mutex submit_mu_;
  std::thread sender_;
};

}  // namespace mycelya
