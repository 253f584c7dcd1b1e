// SPDX-License-Identifier: AGPL-3.0-or-later
//
// The mock provider: the executor in this process, on the CPU. Every batch and
// request is still encoded and decoded, so the wire protocol is exercised
// everywhere the mock runs. With a gpu_type, it also presents that many
// "cuda" devices, emulated on the CPU, so GPU code paths run unchanged. The
// executor's random generators are its session's, as on a server, so each
// device keeps a stream of its own, apart from this process's CPU generator.
//
// MYCELYA_MOCK_CAPTURE_DIR=<folder> writes each batch with its payloads, and
// each request with the batch before it, as fuzzer inputs there
// (server/fuzz/fuzz_case.h): tools/fuzz_corpus.py makes the seed corpus so.
#include <c10/core/Device.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <mutex>

#include "core/provider.h"
#include "providers/common/local_state.h"
#include "providers/mock/emulated_gpus.h"
#include "server/executor.h"
#include "server/fuzz/fuzz_case.h"
#include "server/python_calls_loader.h"

namespace mycelya {
namespace {

class MockSession final : public Session {
 public:
  explicit MockSession(ExecutorOptions options) : executor_(std::move(options)) {}

  std::vector<std::string> devices() const override { return executor_.options().device_names; }
  std::vector<std::string> device_properties() const override {
    return executor_.encoded_device_properties();
  }

  void submit(EncodedBatch& batch) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (!capture_dir_.empty()) {
      last_batch_ = FuzzCase{batch.batch, batch.payloads, ""};
      write_capture(last_batch_);
    }
    executor_.run_batch(batch.batch, batch.payloads);
  }

  std::string request(const std::string& request, std::string* payload) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (!capture_dir_.empty()) capture(request);
    std::string ignored;
    return executor_.handle_request(request, payload ? payload : &ignored);
  }

  // Core saved the storages to the state folder first; the executor, like a
  // server, goes with the session.
  bool can_pause() const override { return true; }
  void pause() override {}

  void stop() override {}

 private:
  // Each batch alone, and each request after the batch before it.
  void capture(const std::string& request) {
    FuzzCase fuzz_case = std::move(last_batch_);
    last_batch_ = FuzzCase{};
    fuzz_case.request = request;
    write_capture(fuzz_case);
  }

  void write_capture(const FuzzCase& fuzz_case) const {
    static std::atomic<uint64_t> captured{0};
    const std::string path =
        capture_dir_ + "/capture-" + std::to_string(getpid()) + "-" + std::to_string(++captured);
    std::ofstream(path, std::ios::binary) << encode_fuzz_case(fuzz_case);
  }

  std::mutex mu_;
  Executor executor_;
  const std::string capture_dir_ = [] {
    const char* dir = std::getenv("MYCELYA_MOCK_CAPTURE_DIR");
    return std::string(dir ? dir : "");
  }();
  FuzzCase last_batch_;  // since the last request, when capturing
};

class MockProvider final : public Provider {
 public:
  std::string name() const override { return "mock"; }

  std::unique_ptr<Session> start(const MachineSpec& spec, StartProgress& /*progress*/) override {
    ExecutorOptions options;
    if (!spec.gpu_type.empty()) {
      for (int i = 0; i < spec.gpu_count; ++i) {
        options.devices.emplace_back(c10::kCPU);
        options.device_names.push_back("cuda:" + std::to_string(i));
        options.device_properties.push_back(emulated_gpu_properties(spec.gpu_type));
      }
    }
    options.devices.emplace_back(c10::kCPU);
    options.device_names.push_back("cpu");
    if (valid_state_key(spec.state_key))
      options.state_dir = local_state_root() + "/" + spec.state_key;
    // Functions run here, in the client's interpreter; the library that
    // runs them lies beside this plugin.
    options.calls = std::make_shared<LazyPythonCalls>(in_process_python_config(
        folder_of(reinterpret_cast<const void*>(&mycelya_provider_create))));
    return std::make_unique<MockSession>(std::move(options));
  }

  // A new executor on the same state folder: core restores its storages.
  std::unique_ptr<Session> resume(const MachineSpec& spec, StartProgress& progress) override {
    return start(spec, progress);
  }

  void discard(const MachineSpec& spec) override { discard_local_state(spec.state_key); }
};

}  // namespace
}  // namespace mycelya

MYCELYA_DEFINE_PROVIDER(mycelya::MockProvider)
