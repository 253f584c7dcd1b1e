// SPDX-License-Identifier: AGPL-3.0-or-later
//
// A provider for core's tests (libmycelya_provider_gated.so): the executor in
// this process, as the mock runs it, with two handles the mock has no reason
// to offer. A gate the test closes keeps the session from taking batches
// (Session::wait_until_ready waits for it), as a busy machine does, and the
// plugin counts the commands of every batch it is given: so a test sees how
// far recording runs ahead of a machine that takes nothing. And a resumed
// session offers the devices $MYCELYA_GATED_RESUME_DEVICES lists (comma-
// separated; default "cpu", as a start), so a test sees a resume onto other
// devices refused. Tests reach the gate through the C functions at the end
// (dlsym on this plugin).
#include <c10/core/Device.h>

#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <sstream>
#include <stdexcept>

#include "core/provider.h"
#include "proto/mycelya.pb.h"
#include "server/executor.h"

namespace mycelya {
namespace {

struct Gate {
  std::mutex mu;
  std::condition_variable cv;
  bool open = true;
  std::vector<size_t> batch_commands;  // per batch submitted, in order
};

Gate& gate() {
  static Gate* gate = new Gate();  // never destroyed: sessions may outlive static destruction
  return *gate;
}

class GatedSession final : public Session {
 public:
  explicit GatedSession(ExecutorOptions options) : executor_(std::move(options)) {}

  std::vector<std::string> devices() const override { return executor_.options().device_names; }
  std::vector<std::string> device_properties() const override {
    return executor_.encoded_device_properties();
  }

  void wait_until_ready() override {
    std::unique_lock<std::mutex> lock(gate().mu);
    gate().cv.wait(lock, [] { return gate().open; });
  }

  void submit(EncodedBatch& batch) override {
    wire::Batch parsed;
    if (!parsed.ParseFromString(batch.batch)) {
      throw std::runtime_error("gated provider: core submitted a batch that does not parse");
    }
    {
      std::lock_guard<std::mutex> lock(gate().mu);
      gate().batch_commands.push_back(static_cast<size_t>(parsed.commands_size()));
    }
    std::lock_guard<std::mutex> lock(mu_);
    executor_.run_batch(batch.batch, batch.payloads);
  }

  std::string request(const std::string& request, std::string* payload) override {
    std::lock_guard<std::mutex> lock(mu_);
    std::string ignored;
    return executor_.handle_request(request, payload ? payload : &ignored);
  }

  // Core saved the storages to the state folder first.
  bool can_pause() const override { return true; }
  void pause() override {}
  void stop() override {}

 private:
  std::mutex mu_;
  Executor executor_;
};

std::unique_ptr<Session> session_on(const std::string& device_list, const MachineSpec& spec) {
  ExecutorOptions options;
  std::stringstream names(device_list);
  for (std::string name; std::getline(names, name, ',');) {
    options.devices.emplace_back(c10::kCPU);  // emulated, as the mock emulates cuda
    options.device_names.push_back(name);
  }
  // Under the test's own folder, which Bazel gives it.
  const char* tmp = std::getenv("TEST_TMPDIR");
  options.state_dir = std::string(tmp ? tmp : "/tmp") + "/gated-state/" + spec.state_key;
  return std::make_unique<GatedSession>(std::move(options));
}

class GatedProvider final : public Provider {
 public:
  std::string name() const override { return "gated"; }

  std::unique_ptr<Session> start(const MachineSpec& spec, StartProgress& /*progress*/) override {
    return session_on("cpu", spec);
  }

  std::unique_ptr<Session> resume(const MachineSpec& spec, StartProgress& /*progress*/) override {
    const char* devices = std::getenv("MYCELYA_GATED_RESUME_DEVICES");
    return session_on(devices && *devices ? devices : "cpu", spec);
  }
};

}  // namespace
}  // namespace mycelya

MYCELYA_DEFINE_PROVIDER(mycelya::GatedProvider)

extern "C" {
// Opens or closes the gate; a closed gate holds every session's next batch.
__attribute__((visibility("default"))) void mycelya_gated_set_open(bool open) {
  {
    std::lock_guard<std::mutex> lock(mycelya::gate().mu);
    mycelya::gate().open = open;
  }
  mycelya::gate().cv.notify_all();
}

// Batches submitted so far, and the commands of batch `i`.
__attribute__((visibility("default"))) size_t mycelya_gated_batches() {
  std::lock_guard<std::mutex> lock(mycelya::gate().mu);
  return mycelya::gate().batch_commands.size();
}

__attribute__((visibility("default"))) size_t mycelya_gated_batch_commands(size_t i) {
  std::lock_guard<std::mutex> lock(mycelya::gate().mu);
  return mycelya::gate().batch_commands.at(i);
}
}
