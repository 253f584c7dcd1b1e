// SPDX-License-Identifier: AGPL-3.0-or-later
//
// The modal provider: one Modal Sandbox per machine, made through Modal's own
// Python SDK (pinned, modal==1.6.4) by a driver process (driver_process.h),
// since Modal supports its SDKs and not its raw API. This plugin keeps the
// transport: gRPC over TLS to the sandbox's h2 tunnel, where Modal's edge
// ends TLS with the system's roots and advertises HTTP/2.
//
//   RemoteMachine("modal", "A100-40GB", gpu_count=2)   # Modal's token, as its CLI sets it
//
// Options: wheel= (this project's wheel, put into the image; default
// $MYCELYA_WHEEL, else the driver packs the installed package's files into
// one), image= (a registry image with mycelya-server instead),
// app=, volume= (the Modal Volume paused machines' tensors go to),
// timeout= (the sandbox's own limit, a backstop), start_timeout=, tls_ca=
// (a CA for the tunnel instead of the system's: tests' fakes).
//
// Billing: stop() terminates the sandbox. Modal counts an open tunnel
// connection as activity, so the server enforces the idle timeout itself
// (30 minutes unless RemoteMachine(idle_timeout=) says otherwise), saving
// the tensors to the Volume first; the sandbox's timeout is the backstop.
// pause() saves to the Volume and terminates; resume() starts a new sandbox
// on the same Volume folder.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>

#include "core/provider.h"
#include "proto/handshake.h"
#include "proto/random_key.h"
#include "providers/common/grpc_session.h"
#include "providers/common/provider_options.h"
#include "providers/modal/driver_process.h"

namespace mycelya {
namespace {

using nlohmann::json;

constexpr int kServerPort = 50051;
constexpr const char* kVolumeMount = "/mycelya-state";
constexpr double kDefaultIdleTimeoutS = 30 * 60;
constexpr int kLogTailLines = 30;
// Short driver calls (terminate, logs, discard).
constexpr std::chrono::seconds kDriverCallTimeout{120};

// Our GPU types to Modal's names; Modal calls the A10G "A10".
const std::map<std::string, std::string>& gpu_names() {
  static const std::map<std::string, std::string> names = {
      {"T4", "T4"},
      {"L4", "L4"},
      {"A10G", "A10"},
      {"A100-40GB", "A100-40GB"},
      {"A100-80GB", "A100-80GB"},
      {"L40S", "L40S"},
      {"H100", "H100"},
      {"H200", "H200"},
      {"B200", "B200"},
  };
  return names;
}

struct ModalOptions {
  std::string wheel;
  std::string image;
  std::string app = "mycelya-torch";
  std::string volume = "mycelya-state";
  double timeout_s = 24 * 3600;
  double start_timeout_s = 1800;
  std::string tls_ca_pem;
};

ModalOptions read_options(const MachineSpec& spec) {
  ProviderOptions options("modal", spec.options);
  ModalOptions result;
  const char* wheel_env = std::getenv("MYCELYA_WHEEL");
  result.wheel = options.take_or("wheel", wheel_env ? wheel_env : "");
  result.image = options.take_or("image", "");
  result.app = options.take_or("app", result.app);
  result.volume = options.take_or("volume", result.volume);
  result.timeout_s = options.take_positive("timeout", result.timeout_s);
  result.start_timeout_s = options.take_positive("start_timeout", result.start_timeout_s);
  result.tls_ca_pem = options.take_file("tls_ca");
  options.finish();
  if (!spec.gpu_type.empty() && !gpu_names().count(spec.gpu_type)) {
    throw options.error("Modal has no " + spec.gpu_type + " GPUs");
  }
  if (result.timeout_s > 24 * 3600) {
    throw options.error("timeout= is at most 86400 seconds (Modal's longest sandbox)");
  }
  if (!result.wheel.empty() && access(result.wheel.c_str(), R_OK) != 0) {
    throw options.error("wheel= names " + result.wheel + ", which cannot be read");
  }
  if (!result.wheel.empty()) {
    // The driver runs elsewhere than here: it gets the absolute path.
    char* absolute = realpath(result.wheel.c_str(), nullptr);
    if (absolute) {
      result.wheel = absolute;
      std::free(absolute);
    }
  }
  return result;
}

// "H100", or "H100:2"; only for a spec with a GPU type.
std::string gpu_argument(const MachineSpec& spec) {
  const std::string name = gpu_names().at(spec.gpu_type);
  return spec.gpu_count > 1 ? name + ":" + std::to_string(spec.gpu_count) : name;
}

// The server inside speaks plaintext h2c on the tunnel's port (TLS ends at
// Modal's edge), and saves paused sessions to the Volume.
std::string server_command(const MachineSpec& spec) {
  const double idle_s = spec.idle_timeout_s > 0 ? spec.idle_timeout_s : kDefaultIdleTimeoutS;
  return "exec mycelya-server --listen \"0.0.0.0:${MYCELYA_PORT:-" + std::to_string(kServerPort) +
         "}\" --insecure --token-env MYCELYA_TOKEN --state-dir " + kVolumeMount +
         " --idle-timeout " + std::to_string(static_cast<long long>(std::ceil(idle_s)));
}

// Terminates a sandbox and waits up to `wait` for it to finish; returns
// whether it did (Modal commits a Volume for the last time when its sandbox
// finishes).
bool terminate_sandbox(const std::string& sandbox_id, std::chrono::seconds wait) {
  const json answer =
      run_driver("terminate", {{"sandbox_id", sandbox_id}, {"wait_s", wait.count()}},
                 kDriverCallTimeout + wait);
  const auto finished = answer.find("finished");
  return finished == answer.end() || !finished->is_boolean() || finished->get<bool>();
}

std::string failure_message(const DriverError& e, const MachineSpec& spec) {
  if (e.kind() == "capacity") {
    return "modal: no " + (spec.gpu_type.empty() ? std::string("sandbox") : spec.gpu_type) +
           " is available on Modal now: " + e.what() + " Try again later or another gpu_type.";
  }
  return std::string("modal: ") + e.what();
}

class ModalSession final : public GrpcBackedSession {
 public:
  ModalSession(std::string sandbox_id, std::unique_ptr<GrpcSession> grpc)
      : GrpcBackedSession(std::move(grpc)), sandbox_id_(std::move(sandbox_id)) {}
  ~ModalSession() override {
    try {
      stop();
    } catch (...) {
      // stop() already said why where it could; a destructor cannot.
    }
  }

  void stop() override { terminate(); }
  bool can_pause() const override { return true; }
  // Core saved the storages to the Volume; the sandbox goes. Modal commits a
  // Volume for the last time when its sandbox finishes: a sandbox that did
  // not finish may not have committed the save.
  void pause() override {
    if (!terminate()) {
      throw std::runtime_error("modal: sandbox " + sandbox_id_ +
                               " did not finish within 2 minutes of its terminate, so Modal may "
                               "not have committed the saved tensors to the Volume.");
    }
  }

 private:
  // Whether the sandbox finished (false: terminated, still finishing).
  bool terminate() {
    grpc_->stop();
    if (terminated_) return true;
    terminated_ = true;
    return terminate_sandbox(sandbox_id_, std::chrono::seconds(120));
  }

  std::string sandbox_id_;
  bool terminated_ = false;
};

class ModalProvider final : public Provider {
 public:
  std::string name() const override { return "modal"; }

  void validate(const MachineSpec& spec) const override { read_options(spec); }

  std::unique_ptr<Session> start(const MachineSpec& spec, StartProgress& progress) override {
    const ModalOptions options = read_options(spec);
    {
      std::lock_guard<std::mutex> lock(mu_);
      started_keys_.insert(spec.state_key);
    }
    const std::string token = random_hex(32, "the machine's token");
    const std::string version = torch_version();
    json input = {
        {"app", options.app},
        {"gpu", spec.gpu_type.empty() ? json(nullptr) : json(gpu_argument(spec))},
        {"python_version", "3.11"},
        {"torch_version", version.substr(0, version.find('+'))},
        {"wheel", options.wheel.empty() ? json(nullptr) : json(options.wheel)},
        {"image", options.image.empty() ? json(nullptr) : json(options.image)},
        {"packages", spec.packages},
        {"env", {{"MYCELYA_TOKEN", token}}},
        {"command", {"sh", "-c", server_command(spec)}},
        {"port", kServerPort},
        {"timeout_s", static_cast<long long>(options.timeout_s)},
        // Modal's own "no capacity" (ResourceExhausted) after three quarters
        // of the start timeout, so the user reads that rather than a timeout.
        {"schedule_timeout_s", std::max(1.0, options.start_timeout_s * 0.75)},
        {"tunnel_timeout_s",
         static_cast<long long>(std::max(1.0, std::min(120.0, options.start_timeout_s * 0.25)))},
        {"volume", options.volume},
        {"volume_mount", kVolumeMount},
    };
    const auto timeout = std::chrono::seconds(static_cast<long long>(options.start_timeout_s));
    const auto began = std::chrono::steady_clock::now();
    json sandbox;
    try {
      sandbox = run_driver(
          "start", input, [&](const std::string& stage) { progress.stage(stage); }, timeout);
    } catch (const DriverError& e) {
      throw std::runtime_error(failure_message(e, spec));
    }
    const std::string sandbox_id = sandbox.value("sandbox_id", "");
    GrpcTarget target;
    target.address = sandbox.value("host", "") + ":" + std::to_string(sandbox.value("port", 443));
    target.token = token;
    target.tls = true;
    target.tls_root_certs_pem = options.tls_ca_pem;  // empty: the system's roots
    target.state_key = spec.state_key;
    progress.stage("waiting for mycelya-server at " + target.address);
    try {
      // The tunnel is up before the server listens (the image's Python and
      // torch import first): connect waits for what is left of the start
      // timeout, and at least 10 s.
      const auto left = std::max<std::chrono::milliseconds>(
          std::chrono::seconds(10), std::chrono::duration_cast<std::chrono::milliseconds>(
                                        began + timeout - std::chrono::steady_clock::now()));
      return std::make_unique<ModalSession>(sandbox_id,
                                            std::make_unique<GrpcSession>(target, left));
    } catch (const std::exception& e) {
      std::string log;
      try {
        log = run_driver("logs", {{"sandbox_id", sandbox_id}, {"lines", kLogTailLines}},
                         kDriverCallTimeout)
                  .value("log", "");
      } catch (const std::exception&) {
        // The log is an aid to the error being raised, never a new error.
      }
      try {
        terminate_sandbox(sandbox_id, std::chrono::seconds(30));
      } catch (const std::exception&) {
        // As above: the start's error is the one to raise.
      }
      throw std::runtime_error("modal: sandbox " + sandbox_id +
                               " never became healthy: " + e.what() +
                               (log.empty() ? "" : "\nThe sandbox's last log lines:\n" + log) +
                               "\nThe sandbox was terminated.");
    }
  }

  // A new sandbox on the same Volume folder: core restores the storages.
  std::unique_ptr<Session> resume(const MachineSpec& spec, StartProgress& progress) override {
    return start(spec, progress);
  }

  void discard(const MachineSpec& spec) override {
    {
      // A machine that never started saved nothing (and may lack credentials).
      std::lock_guard<std::mutex> lock(mu_);
      if (!started_keys_.erase(spec.state_key)) return;
    }
    const ModalOptions options = read_options(spec);
    run_driver("discard", {{"volume", options.volume}, {"path", spec.state_key}},
               kDriverCallTimeout);
  }

 private:
  std::mutex mu_;
  std::set<std::string> started_keys_;
};

}  // namespace
}  // namespace mycelya

MYCELYA_DEFINE_PROVIDER(mycelya::ModalProvider)
