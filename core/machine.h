// SPDX-License-Identifier: AGPL-3.0-or-later
//
// One remote machine as the client sees it: a provider session, the queue of
// commands not yet sent, and the background thread that sends them.
//
// Commands are appended without waiting; the sender thread ships whatever has
// accumulated as one batch, so a flood of small ops coalesces while a batch is
// in flight. Sync points (request) first hand every queued command to the
// session, so a request always observes the effects of all earlier ops. A
// small download is the exception where the session can (Session::read_after):
// it waits only for the last command that mentions its source, so
// loss.item() returns once the forward pass has run, and the next step is
// recorded while the machine still runs this step's backward pass.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "core/provider.h"
#include "proto/mycelya.pb.h"

namespace mycelya {

class Machine {
 public:
  Machine(std::string provider, MachineSpec spec);
  ~Machine();
  Machine(const Machine&) = delete;
  Machine& operator=(const Machine&) = delete;

  const std::string& id() const { return id_; }
  const std::string& provider() const { return provider_; }
  const MachineSpec& spec() const { return spec_; }

  // Starts the provider session (no-op when running).
  void start();
  // Flushes, stops the session and the sender; later ops on it raise.
  void stop();
  bool running() const;

  // Remote device names by slot, e.g. {"cuda:0", "cpu"}.
  std::vector<std::string> devices() const;
  // The slot of "type:index"; throws std::invalid_argument naming the devices offered.
  int slot_of(const std::string& type, int index) const;

  // Op names are interned per session: returns the id, and whether this is its
  // first use (the record must then carry the name). enqueue() and request()
  // intern every record's op_name themselves, under the queue's lock, so the
  // record that names an op is always the first one sent.
  uint32_t intern_op(const std::string& name, bool* first_use);

  // Queues a command (encoded at once, in the caller's thread; its op name is
  // interned first, which changes *command). Throws if the machine is stopped
  // or lost.
  void enqueue(wire::Command* command);
  void enqueue(wire::Command command) { enqueue(&command); }
  // `payload` best comes from payload_pool() (core/payload_pool.h),
  // which gets it back once it is sent.
  void enqueue_upload(wire::Upload upload, std::string payload);
  // Queues a free; silently dropped once the machine is stopped.
  void free_storage(uint64_t storage_id);

  // Sends everything queued, then the request, and waits for its response.
  // Raises std::runtime_error for a pending error of earlier ops or an error
  // of this request.
  wire::Response request(wire::Request request, std::string* payload = nullptr);

  // Whether the machine's ops draw from this process's own generators (mock).
  bool shares_process_generators() const;
  // The state of the random generator of the device in `slot` (a sync
  // point), and setting it (queued, like an op). Both throw std::logic_error
  // where the session shares this process's generators (mock).
  std::string rng_state(int slot);
  void set_rng_state(int slot, std::string state);

  // Flushes and waits until every queued op has run; raises pending errors.
  void synchronize();

  // Batches handed to the session so far, blocking requests (round trips)
  // made, those of them answered ahead of the queue (Session::read_after),
  // and tensor bytes uploaded: for tests and benchmarks.
  uint64_t batches_sent() const;
  uint64_t round_trips() const;
  uint64_t early_reads() const;
  uint64_t bytes_uploaded() const;

 private:
  void check_own_generators() const;
  // Queues an Upload or SetRngState with `payload` as the batch's next
  // payload, pointing the command at it.
  void enqueue_with_payload(wire::Command command, std::string payload);
  void sender_loop();
  // Hands everything queued to the session. Caller holds submit_mu_.
  void flush_locked();
  void check_usable_locked() const;
  // Marks the session lost (keeping the first reason) and throws that.
  [[noreturn]] void throw_lost_locked(const std::string& why);
  // Appends `command` to queued_, encoded as an entry of Batch.commands.
  void append_locked(const wire::Command& command);
  // The download in `request` may skip the commands after this one (0: all);
  // nullopt when it must go the ordinary way. Caller holds queue_mu_.
  std::optional<uint64_t> read_after_locked(const wire::Request& request) const;
  // Answers a small download through Session::read_after, beside the queue;
  // false when it must go in order instead.
  bool read_early(wire::Request& request, std::string* payload, std::string* response);
  uint32_t intern_locked(const std::string& name, bool* first_use);
  // Replaces a record's op_name by its id, keeping the name on first use.
  void intern_record_locked(wire::OpRecord* record);

  const std::string provider_;
  const MachineSpec spec_;
  const std::string id_;
  // MYCELYA_SYNC=1: every queued command is waited for, so errors raise at the op.
  const bool synchronous_;

  // Shared with the reads beside the queue, which hold no lock while they wait.
  std::shared_ptr<Session> session_;
  std::vector<std::string> devices_;

  // Guards the queue and the state below.
  mutable std::mutex queue_mu_;
  std::condition_variable queue_cv_;
  // Queued commands, already encoded as Batch.commands entries: a batch is a
  // small header plus these bytes, and no message crosses to the sender thread.
  std::string queued_;
  std::vector<std::string> payloads_;
  std::vector<uint64_t> frees_;
  bool running_ = false;
  bool stopping_ = false;
  std::string lost_;  // set once the session failed; every later call raises it
  uint64_t batches_sent_ = 0;
  uint64_t round_trips_ = 0;
  uint64_t bytes_uploaded_ = 0;
  uint64_t next_sequence_ = 1;
  // Commands appended and handed to the session this session, counted as
  // the machine counts them (wire::ReadRequest), and for each live storage
  // the last command that mentions it.
  uint64_t commands_appended_ = 0;
  uint64_t commands_flushed_ = 0;
  std::unordered_map<uint64_t, uint64_t> last_mention_;
  bool session_reads_early_ = true;  // until read_after() says otherwise
  uint64_t early_reads_ = 0;
  // Reads beside the queue still out; stop() waits for them.
  int early_reads_in_flight_ = 0;
  std::condition_variable early_reads_cv_;

  std::unordered_map<std::string, uint32_t> op_ids_;

  // Serializes everything that talks to the session, keeping order.
  std::mutex submit_mu_;
  std::thread sender_;
};

}  // namespace mycelya
