// SPDX-License-Identifier: AGPL-3.0-or-later
//
// The contract between core and a provider plugin (libmycelya_provider_<name>.so).
//
// Only this header crosses the boundary. Messages cross it already encoded
// (proto/mycelya.proto), so a provider needs no knowledge of core's internals
// and core none of the provider's transport.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace mycelya {

// Bumped whenever this header changes incompatibly; the loader refuses a plugin
// built against another version.
constexpr int kProviderAbiVersion = 8;

// What the user asked for in RemoteMachine(provider, gpu_type, ...).
struct MachineSpec {
  std::string gpu_type;  // empty: no GPU
  int gpu_count = 1;
  std::vector<std::string> packages;
  double idle_timeout_s = 0;  // 0: never
  // Names this machine's paused state (64 hex digits, random, made by core):
  // a server keeps a session's saved storages under it (x-mycelya-state-key).
  std::string state_key;
  // Provider-specific settings, RemoteMachine(provider, ..., name=value):
  // core passes them through unread, so each provider owns its names and
  // checks them in Provider::validate(). Values are text (Python's str(value);
  // bools are "true"/"false").
  std::map<std::string, std::string> options;
};

// What a start waits for. A provider calls stage() whenever that changes
// ("creating the pod", "pulling the image", "waiting for the server"); core
// logs each stage and shows the current one, with the time elapsed, on an
// interactive terminal.
class StartProgress {
 public:
  virtual ~StartProgress() = default;
  virtual void stage(const std::string& what) = 0;
};

// An encoded Batch plus the raw payloads its Upload commands point at.
struct EncodedBatch {
  std::string batch;
  std::vector<std::string> payloads;
};

// One running machine. Calls come from core's sender thread and from sync
// points, never concurrently (core serializes them), in the order they must
// take effect; read_after() is the one exception.
class Session {
 public:
  virtual ~Session() = default;

  // Devices the machine serves, e.g. {"cuda:0", "cpu"}; slot i is devices()[i].
  virtual std::vector<std::string> devices() const = 0;
  // What each device is (name, memory, compute capability): an encoded
  // wire::DeviceProperties per slot, as the machine's Hello gave them.
  virtual std::vector<std::string> device_properties() const = 0;

  // Fire-and-forget: queue the batch behind everything sent before. Must not
  // wait for execution. Throws std::runtime_error if the machine is lost.
  // The payloads are done with on return; the caller reuses their buffers.
  virtual void submit(EncodedBatch& batch) = 0;

  // Returns once submit() would not have to wait for the machine (a transport
  // with a bounded number of batches in flight waits here for a free place),
  // or once the machine is lost. Core gathers its queue only after this, so
  // ops recorded during the wait travel in that batch.
  virtual void wait_until_ready() {}

  // Waits for everything submitted before, then answers an encoded Request
  // with an encoded Response; a download's bytes go to *payload, whose
  // memory (capacity) should be reused when it is big enough.
  virtual std::string request(const std::string& request, std::string* payload) = 0;

  // Optional: answers an encoded Request holding a download once the machine
  // has run `after_command` commands, counting every Command of every batch
  // submitted, from 1, without waiting for later batches (see
  // wire::ReadRequest). Core calls it only for a source no later command
  // mentions, and concurrently with submit() and wait_until_ready(). Returns
  // false where the session cannot; core then sends an ordinary request().
  // stop() must make a read_after() in progress return or throw: core's
  // stop waits for it.
  virtual bool read_after(const std::string& /*request*/, uint64_t /*after_command*/,
                          std::string* /*response*/, std::string* /*payload*/) {
    return false;
  }

  // Ends the machine for good; core then drops its saved state, if any,
  // through Provider::discard().
  virtual void stop() = 0;

  // Whether pause() can keep the machine's state; core asks before saving.
  virtual bool can_pause() const { return false; }
  // Ends the machine but keeps what a SaveStateRequest wrote, for
  // Provider::resume(). Core has saved the storages before it calls this.
  virtual void pause() {
    throw std::runtime_error("this provider cannot pause machines; stop() ends them");
  }
};

class Provider {
 public:
  virtual ~Provider() = default;

  virtual std::string name() const = 0;

  // Checks a spec before anything starts (RemoteMachine's constructor): GPU
  // type, options and their values. Throws std::invalid_argument saying what
  // is wrong and what would be right. Takes no options by default.
  virtual void validate(const MachineSpec& spec) const {
    if (spec.options.empty()) return;
    throw std::invalid_argument("provider '" + name() + "' takes no options, got '" +
                                spec.options.begin()->first + "'.");
  }

  // Starts a machine. Throws std::invalid_argument for a spec the provider
  // cannot serve and std::runtime_error when starting fails (missing or
  // refused credentials, no capacity, a server that never became healthy).
  virtual std::unique_ptr<Session> start(const MachineSpec& spec, StartProgress& progress) = 0;

  // Starts again the machine that Session::pause() ended (spec.state_key
  // names it); core then restores its storages with a RestoreStateRequest.
  // Throws std::runtime_error when that machine cannot be started.
  virtual std::unique_ptr<Session> resume(const MachineSpec& /*spec*/,
                                          StartProgress& /*progress*/) {
    throw std::runtime_error("provider " + name() + " cannot resume paused machines");
  }

  // The machine is stopped for good (from running, lost or paused): drops
  // whatever state it saved.
  virtual void discard(const MachineSpec& /*spec*/) {}
};

}  // namespace mycelya

// Every plugin exports these two symbols with C linkage; define them with
// MYCELYA_DEFINE_PROVIDER(YourProvider) at the end of the plugin's source.
extern "C" {
int mycelya_provider_abi_version();
mycelya::Provider* mycelya_provider_create();
}

#define MYCELYA_DEFINE_PROVIDER(ProviderClass)                                            \
  extern "C" {                                                                            \
  __attribute__((visibility("default"))) int mycelya_provider_abi_version() {             \
    return ::mycelya::kProviderAbiVersion;                                                \
  }                                                                                       \
  __attribute__((visibility("default"))) ::mycelya::Provider* mycelya_provider_create() { \
    return new ProviderClass();                                                           \
  }                                                                                       \
  }
