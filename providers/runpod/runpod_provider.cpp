// SPDX-License-Identifier: AGPL-3.0-or-later
//
// The runpod provider: one RunPod pod per machine, made through RunPod's
// REST API v2 (runpod_api.h), running the server image (deploy/), reached on
// the pod's public TCP port over TLS with a certificate made for the machine
// and pinned here (self_signed_cert.h).
//
//   RemoteMachine("runpod", "H100", gpu_count=2)        # RUNPOD_API_KEY
//
// Options: image= (the server image), cloud= ("SECURE" or "COMMUNITY"),
// disk= (container disk, GB), volume= (the pod's /workspace volume, GB,
// which keeps paused state), start_timeout= (seconds).
//
// Billing ends with the machine: stop() terminates the pod; pause() stops it
// (RunPod then bills only its volume) and resume() starts it again. A pod
// whose client vanished stops itself: its server exits after the idle
// timeout (30 minutes unless RemoteMachine(idle_timeout=) says otherwise),
// having saved its tensors, and the image's entry point then stops the pod
// through RunPod's API with the pod-scoped key RunPod gives every pod.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <thread>

#include "core/provider.h"
#include "proto/random_key.h"
#include "providers/common/grpc_session.h"
#include "providers/common/provider_options.h"
#include "providers/common/self_signed_cert.h"
#include "providers/runpod/runpod_api.h"

namespace mycelya {
namespace {

using nlohmann::json;

// The server image (tools/build_image.sh builds it; push it to a registry
// RunPod can pull from and name it with image=).
constexpr const char* kDefaultImage = "ghcr.io/mycelya-torch/mycelya-server:0.1.0";
constexpr int kServerPort = 50051;
// The name the machine's certificate carries; the client reaches the pod by IP.
constexpr const char* kCertificateName = "mycelya-machine";
constexpr double kDefaultIdleTimeoutS = 30 * 60;
constexpr auto kPollInterval = std::chrono::milliseconds(500);
// How many times a create that failed with a 5xx (and made no pod) is tried again.
constexpr int kCreateAttempts = 3;
// How long a resume waits for the pause's stop to finish.
constexpr std::chrono::seconds kStopWait{120};
// Log lines shown when a pod fails.
constexpr int kLogTailLines = 30;

// Our GPU types to RunPod's GPU ids, best first; RunPod's catalog decides
// which exist now. Empty: RunPod has no such GPU.
const std::map<std::string, std::vector<std::string>>& gpu_ids() {
  static const std::map<std::string, std::vector<std::string>> ids = {
      {"T4", {}},
      {"L4", {"NVIDIA L4"}},
      {"A10G", {}},
      {"A100-40GB", {}},
      {"A100-80GB", {"NVIDIA A100-SXM4-80GB", "NVIDIA A100 80GB PCIe"}},
      {"L40S", {"NVIDIA L40S"}},
      {"H100", {"NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA H100 NVL"}},
      {"H200", {"NVIDIA H200", "NVIDIA H200 NVL"}},
      {"B200", {"NVIDIA B200"}},
  };
  return ids;
}

std::string offered_types() {
  std::string text;
  for (const auto& [type, ids] : gpu_ids()) {
    if (!ids.empty()) text += (text.empty() ? "" : ", ") + type;
  }
  return text;
}

struct RunPodOptions {
  std::string image = kDefaultImage;
  std::string cloud = "SECURE";
  int disk_gb = 20;
  int volume_gb = 20;
  double start_timeout_s = 900;
};

int whole_gb(ProviderOptions& options, const std::string& name, int fallback, int minimum) {
  const double value = options.take_positive(name, fallback);
  if (value != std::floor(value) || value < minimum || value > 10000) {
    throw options.error(name + "= must be a whole number of GB from " + std::to_string(minimum) +
                        " to 10000");
  }
  return static_cast<int>(value);
}

RunPodOptions read_options(const MachineSpec& spec) {
  ProviderOptions options("runpod", spec.options);
  RunPodOptions result;
  result.image = options.take_or("image", kDefaultImage);
  result.cloud = options.take_or("cloud", "SECURE");
  result.disk_gb = whole_gb(options, "disk", result.disk_gb, 1);
  result.volume_gb = whole_gb(options, "volume", result.volume_gb, 10);
  result.start_timeout_s = options.take_positive("start_timeout", result.start_timeout_s);
  options.finish();
  if (result.cloud != "SECURE" && result.cloud != "COMMUNITY") {
    throw options.error("cloud= must be \"SECURE\" or \"COMMUNITY\", got '" + result.cloud + "'");
  }
  if (result.image.empty()) throw options.error("image= must name the server image");
  if (spec.gpu_type.empty()) {
    throw options.error("a RunPod machine needs a gpu_type, one of " + offered_types());
  }
  const auto it = gpu_ids().find(spec.gpu_type);
  if (it == gpu_ids().end() || it->second.empty()) {
    throw options.error("RunPod has no " + spec.gpu_type + " GPUs; it offers " + offered_types());
  }
  return result;
}

// The pod's name: found again by it after a failed create, and on resume.
std::string pod_name(const MachineSpec& spec) { return "mycelya-" + spec.state_key.substr(0, 16); }

// Reports a stage only when it changes, so the log shows transitions.
class Stages {
 public:
  explicit Stages(StartProgress& progress) : progress_(progress) {}
  void operator()(const std::string& stage) {
    if (stage == last_) return;
    last_ = stage;
    progress_.stage(stage);
  }

 private:
  StartProgress& progress_;
  std::string last_;
};

void terminate_all(const RunPodApi& api, const std::string& name) {
  for (const json& pod : api.find_pods(name)) api.terminate(string_field(pod, "id"));
}

std::string with_log(const RunPodApi& api, const std::string& pod_id, const std::string& message) {
  const std::string log = api.log_tail(pod_id, kLogTailLines);
  return message + (log.empty() ? "" : "\nThe pod's last log lines:\n" + log);
}

// How a pod ends: terminated (gone, with its volume) or stopped (billing
// only its volume, which keeps the paused tensors). A failed start ends a
// new pod by terminating it, a resumed one by stopping it again.
enum class PodEnd { kTerminate, kStop };

void end_pod(const RunPodApi& api, const std::string& pod_id, PodEnd how) {
  if (how == PodEnd::kTerminate) return api.terminate(pod_id);
  try {
    api.action(pod_id, "stop");
  } catch (const RunPodError& e) {
    // 409: it is already stopped (its server's idle exit stopped it).
    if (e.status() != 409) throw;
  }
}

void give_up(const RunPodApi& api, const std::string& pod_id, PodEnd on_failure) {
  try {
    end_pod(api, pod_id, on_failure);
  } catch (const std::exception&) {
    // The error being raised says what failed; this is cleanup.
  }
}

std::string failure_note(PodEnd on_failure) {
  return on_failure == PodEnd::kTerminate
             ? "\nThe pod was terminated."
             : "\nThe pod was stopped; its volume keeps the paused tensors (resume() tries "
               "again, stop() ends the machine).";
}

// "ip:port" of the tcp entry for the server's port, once RunPod reports it.
std::optional<std::string> public_address(const json& pod) {
  const auto runtime = pod.find("runtime");
  if (runtime == pod.end() || !runtime->is_object()) return std::nullopt;
  const auto ports = runtime->find("ports");
  if (ports == runtime->end() || !ports->is_array()) return std::nullopt;
  for (const json& port : *ports) {
    if (!port.is_object()) continue;
    const auto private_port = port.find("private");
    const auto public_port = port.find("public");
    if (private_port == port.end() || !private_port->is_number_integer() ||
        *private_port != kServerPort || string_field(port, "type") != "tcp" ||
        public_port == port.end() || !public_port->is_number_integer() ||
        string_field(port, "ip").empty()) {
      continue;
    }
    const long long number = public_port->get<long long>();
    if (number < 1 || number > 65535) continue;
    return string_field(port, "ip") + ":" + std::to_string(number);
  }
  return std::nullopt;
}

// Polls the pod until its server's port is public; returns "ip:port".
// Throws, having terminated or stopped the pod, when it fails or takes too long.
std::string wait_until_serving(const RunPodApi& api, const std::string& pod_id, double timeout_s,
                               Stages& stage, PodEnd on_failure) {
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::milliseconds(static_cast<long long>(timeout_s * 1000));
  try {
    while (std::chrono::steady_clock::now() < deadline) {
      const json pod = api.get_pod(pod_id);
      const std::string status = string_field(pod, "status");
      if (status == "PROVISIONING") {
        stage("provisioning (RunPod is placing pod " + pod_id + ")");
      } else if (status == "STARTING") {
        stage("starting the container (pulling the image)");
      } else if (status == "RUNNING") {
        stage("waiting for mycelya-server to listen");
        if (const std::optional<std::string> address = public_address(pod)) return *address;
      } else if (status == "ERROR") {
        throw std::runtime_error(
            with_log(api, pod_id, "runpod: pod " + pod_id + " failed to start (status ERROR)."));
      } else {
        throw std::runtime_error("runpod: pod " + pod_id + " is " + status +
                                 " while starting; it was stopped or terminated from elsewhere.");
      }
      std::this_thread::sleep_for(kPollInterval);
    }
    throw std::runtime_error(with_log(api, pod_id,
                                      "runpod: pod " + pod_id + " never became healthy in " +
                                          std::to_string(static_cast<long long>(timeout_s)) +
                                          " s (RemoteMachine(..., start_timeout=) waits longer)."));
  } catch (const std::exception& e) {
    give_up(api, pod_id, on_failure);
    throw std::runtime_error(e.what() + failure_note(on_failure));
  }
}

class RunPodSession final : public GrpcBackedSession {
 public:
  RunPodSession(std::shared_ptr<RunPodApi> api, std::string pod_id,
                std::unique_ptr<GrpcSession> grpc)
      : GrpcBackedSession(std::move(grpc)), api_(std::move(api)), pod_id_(std::move(pod_id)) {}
  ~RunPodSession() override {
    try {
      stop();
    } catch (...) {
      // stop() already said why, where it could; a destructor cannot.
    }
  }

  void stop() override { end(PodEnd::kTerminate); }
  bool can_pause() const override { return true; }
  // Core saved the storages to the pod's volume; a stopped pod keeps it.
  void pause() override { end(PodEnd::kStop); }

 private:
  void end(PodEnd how) {
    grpc_->stop();
    if (ended_) return;
    ended_ = true;
    end_pod(*api_, pod_id_, how);
  }

  std::shared_ptr<RunPodApi> api_;
  std::string pod_id_;
  bool ended_ = false;
};

// Connects to the pod's server with its token, pinning `certificate_pem`.
std::unique_ptr<Session> connect(const std::shared_ptr<RunPodApi>& api, const std::string& pod_id,
                                 const std::string& address, const std::string& token,
                                 const std::string& certificate_pem, const MachineSpec& spec,
                                 Stages& stage, PodEnd on_failure) {
  GrpcTarget target;
  target.address = address;
  target.token = token;
  target.tls = true;
  target.tls_root_certs_pem = certificate_pem;
  target.tls_server_name = kCertificateName;
  target.state_key = spec.state_key;
  stage("connecting to mycelya-server at " + address);
  try {
    return std::make_unique<RunPodSession>(
        api, pod_id, std::make_unique<GrpcSession>(target, std::chrono::seconds(60)));
  } catch (const std::exception& e) {
    const std::string message = with_log(*api, pod_id, std::string("runpod: ") + e.what());
    give_up(*api, pod_id, on_failure);
    throw std::runtime_error(message + failure_note(on_failure));
  }
}

class RunPodProvider final : public Provider {
 public:
  std::string name() const override { return "runpod"; }

  void validate(const MachineSpec& spec) const override { read_options(spec); }

  std::unique_ptr<Session> start(const MachineSpec& spec, StartProgress& progress) override {
    const RunPodOptions options = read_options(spec);
    Stages stage(progress);
    auto api = std::make_shared<RunPodApi>();
    stage("looking up RunPod's " + spec.gpu_type + " GPUs");
    const std::vector<std::string> candidates = available_ids(*api, spec, options);

    const CertificateAndKey certificate = make_self_signed_certificate(kCertificateName, 365);
    const double idle_s = spec.idle_timeout_s > 0 ? spec.idle_timeout_s : kDefaultIdleTimeoutS;
    json body = {
        {"name", pod_name(spec)},
        {"image", options.image},
        {"cloud", options.cloud},
        {"disk", options.disk_gb},
        {"ports", {std::to_string(kServerPort) + "/tcp"}},
        {"mounts", {{"persistent", {{"size", options.volume_gb}, {"path", "/workspace"}}}}},
        {"env",
         {{"MYCELYA_TOKEN", random_hex(32, "the machine's token")},
          {"MYCELYA_TLS_CERT", certificate.certificate_pem},
          {"MYCELYA_TLS_KEY", certificate.private_key_pem},
          {"MYCELYA_PORT", std::to_string(kServerPort)},
          {"MYCELYA_STATE_DIR", "/workspace/mycelya-state"},
          {"MYCELYA_IDLE_TIMEOUT", std::to_string(static_cast<long long>(std::ceil(idle_s)))}}},
    };
    const std::string token = body["env"]["MYCELYA_TOKEN"];
    const std::string pod_id = string_field(create(*api, spec, body, candidates, stage), "id");
    try {
      const std::string address =
          wait_until_serving(*api, pod_id, options.start_timeout_s, stage, PodEnd::kTerminate);
      // The certificate made here is pinned, not the one the API echoes.
      return connect(api, pod_id, address, token, certificate.certificate_pem, spec, stage,
                     PodEnd::kTerminate);
    } catch (...) {
      // No pod of this machine left billing after a failed start (a create
      // retried after no answer may have made two; terminating twice is harmless).
      terminate_all(*api, pod_name(spec));
      throw;
    }
  }

  std::unique_ptr<Session> resume(const MachineSpec& spec, StartProgress& progress) override {
    const RunPodOptions options = read_options(spec);
    Stages stage(progress);
    auto api = std::make_shared<RunPodApi>();
    const std::optional<json> found = api->find_pod(pod_name(spec));
    if (!found) {
      throw std::runtime_error("runpod: the machine's pod " + pod_name(spec) +
                               " no longer exists (terminated from elsewhere?), and its saved "
                               "tensors went with its volume.");
    }
    const std::string pod_id = string_field(*found, "id");
    // The pause's stop is asynchronous: a pod still RUNNING is on its way to
    // EXITED, its server saving; starting it before then would meet that
    // server shutting down.
    stage("waiting for pod " + pod_id + " to stop");
    const auto deadline = std::chrono::steady_clock::now() + kStopWait;
    std::string status = string_field(api->get_pod(pod_id), "status");
    while (status != "EXITED" && status != "ERROR") {
      if (std::chrono::steady_clock::now() > deadline) {
        throw std::runtime_error("runpod: pod " + pod_id + " is still " + status + " " +
                                 std::to_string(kStopWait.count()) +
                                 " s after it was asked to stop; resume() tries again.");
      }
      std::this_thread::sleep_for(kPollInterval);
      status = string_field(api->get_pod(pod_id), "status");
    }
    stage("starting pod " + pod_id + " again");
    try {
      api->action(pod_id, "start");
    } catch (const RunPodError& e) {
      throw std::runtime_error(
          "runpod: pod " + pod_id + " cannot start now (" + std::to_string(e.status()) + ": " +
          e.what() + ")" +
          (e.status() == 400 ? ". A stopped pod keeps its volume on one host, and that host has "
                               "no free " +
                                   spec.gpu_type + " now; resume() later tries again."
                             : ""));
    }
    // The public port changes on every start: read it again. A failure stops
    // the pod again; its volume keeps the tensors.
    const std::string address =
        wait_until_serving(*api, pod_id, options.start_timeout_s, stage, PodEnd::kStop);
    const json pod = api->get_pod(pod_id);
    const json env = pod.contains("env") ? pod["env"] : json::object();
    return connect(api, pod_id, address, string_field(env, "MYCELYA_TOKEN"),
                   string_field(env, "MYCELYA_TLS_CERT"), spec, stage, PodEnd::kStop);
  }

  void discard(const MachineSpec& spec) override {
    if (!std::getenv("RUNPOD_API_KEY")) return;  // it never had a pod
    try {
      terminate_all(RunPodApi(), pod_name(spec));
    } catch (const std::exception& e) {
      throw std::runtime_error(std::string(e.what()) + " Terminate pod " + pod_name(spec) +
                               " at https://www.runpod.io/console/pods so it stops billing.");
    }
  }

 private:
  // Our type's RunPod ids that RunPod lists now, those in stock first.
  static std::vector<std::string> available_ids(const RunPodApi& api, const MachineSpec& spec,
                                                const RunPodOptions& options) {
    const json catalog = api.gpu_catalog(spec.gpu_count, options.cloud);
    std::vector<std::string> in_stock, out_of_stock;
    for (const std::string& id : gpu_ids().at(spec.gpu_type)) {
      for (const json& gpu : catalog) {
        if (string_field(gpu, "id") != id) continue;
        (string_field(gpu, "availability") == "NONE" ? out_of_stock : in_stock).push_back(id);
      }
    }
    in_stock.insert(in_stock.end(), out_of_stock.begin(), out_of_stock.end());
    if (in_stock.empty()) {
      std::string ids;
      for (const std::string& id : gpu_ids().at(spec.gpu_type))
        ids += (ids.empty() ? "" : ", ") + id;
      throw std::runtime_error("runpod: RunPod's catalog lists none of " + ids + " (" +
                               spec.gpu_type + ") now; try another gpu_type.");
    }
    return in_stock;
  }

  // Creates the pod with the first candidate that has capacity. A 5xx may
  // have made the pod anyway: it is found by name rather than made twice.
  static json create(const RunPodApi& api, const MachineSpec& spec, json body,
                     const std::vector<std::string>& candidates, Stages& stage) {
    std::string refusals;
    for (const std::string& id : candidates) {
      body["gpu"] = {{"id", id}, {"count", spec.gpu_count}};
      stage("creating a pod with " + std::to_string(spec.gpu_count) + "x " + id);
      for (int attempt = 1; attempt <= kCreateAttempts; ++attempt) {
        try {
          return api.create_pod(body);
        } catch (const RunPodError& e) {
          if (e.status() >= 500 || e.status() == 0) {  // 0: no answer at all
            if (std::optional<json> pod = api.find_pod(body["name"])) return *pod;
            if (attempt == kCreateAttempts) refusals += "\n  " + id + ": " + e.what();
            std::this_thread::sleep_for(std::chrono::seconds(attempt));
            continue;
          }
          if (e.status() != 400) {
            throw std::runtime_error("runpod: RunPod refused to create the pod (" +
                                     std::to_string(e.status()) + ": " + e.what() + ")");
          }
          refusals += "\n  " + id + ": " + e.what();
          break;  // no capacity for this id: the next one
        }
      }
    }
    throw std::runtime_error("runpod: no " + spec.gpu_type + " is available on RunPod now (" +
                             std::to_string(spec.gpu_count) + " per pod, cloud " +
                             body.value("cloud", "") + "). RunPod said:" + refusals +
                             "\nTry again later, another gpu_type, or cloud=\"COMMUNITY\".");
  }
};

}  // namespace
}  // namespace mycelya

MYCELYA_DEFINE_PROVIDER(mycelya::RunPodProvider)
