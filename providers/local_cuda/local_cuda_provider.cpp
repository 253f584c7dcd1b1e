// SPDX-License-Identifier: AGPL-3.0-or-later
//
// The local-cuda provider: runs mycelya-server as a child process of this
// one, on a Unix socket in a fresh private folder with a fresh token, and
// talks to it over the shared gRPC transport. The server serves cuda where
// this host has GPUs and cpu always.
//
// The child never outlives us: it gets SIGKILL when the thread that started
// it dies (PR_SET_PDEATHSIG, providers/common/child_process.h) and also
// watches its parent (--exit-with-parent); stop() sends SIGTERM and, after a
// grace period, SIGKILL.
//
// Pausing: the server keeps paused sessions under local_state_root()
// (--state-dir), so a server started later on the same folder restores them.
//
// Start-up waits for the one line the server prints to stdout once it
// listens (a pipe here), then connects: no connection attempt can find the
// socket missing and leave gRPC's channel in its reconnect backoff.
#include <dlfcn.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <vector>

#include "core/provider.h"
#include "proto/listening_line.h"
#include "proto/random_key.h"
#include "providers/common/child_process.h"
#include "providers/common/grpc_session.h"
#include "providers/common/local_state.h"

namespace mycelya {
namespace {

// mycelya-server: $MYCELYA_SERVER, else beside this plugin.
std::string server_binary() {
  if (const char* env = std::getenv("MYCELYA_SERVER")) return env;
  Dl_info info;
  if (dladdr(reinterpret_cast<void*>(&server_binary), &info) && info.dli_fname) {
    std::string path = info.dli_fname;
    return path.substr(0, path.rfind('/') + 1) + "mycelya-server";
  }
  return "mycelya-server";
}

std::string tail_of(const std::string& path, size_t max_bytes = 2000) {
  std::ifstream file(path);
  std::stringstream ss;
  ss << file.rdbuf();
  std::string text = ss.str();
  return text.size() > max_bytes ? "..." + text.substr(text.size() - max_bytes) : text;
}

// The server process and its private folder.
class ChildServer {
 public:
  // `idle_timeout_s` > 0: the server stops itself after that long without a
  // client message (RemoteMachine(idle_timeout=...)).
  explicit ChildServer(double idle_timeout_s) {
    const std::string state_dir = "--state-dir=" + local_state_root();
    const std::string binary = server_binary();
    if (access(binary.c_str(), X_OK) != 0) {
      throw std::runtime_error("local-cuda: mycelya-server not found at " + binary +
                               " (set MYCELYA_SERVER to its path).");
    }
    char dir_template[] = "/tmp/mycelya-XXXXXX";
    if (!mkdtemp(dir_template)) throw std::runtime_error("local-cuda: cannot create a temp folder");
    dir_ = dir_template;
    socket_ = dir_ + "/server.sock";
    log_ = dir_ + "/server.log";
    token_ = random_hex(24, "a local-cuda session token");

    // Whole seconds, rounded up (never sooner than asked), at most the
    // server's year.
    const double idle_seconds = std::min(std::ceil(idle_timeout_s), 365.0 * 24 * 3600);
    ChildSpec child;
    child.argv = {binary,
                  "--listen=unix:" + socket_,
                  "--token-env=MYCELYA_TOKEN",
                  "--devices=auto",
                  "--exit-with-parent",
                  "--idle-timeout=" + std::to_string(static_cast<long long>(idle_seconds)),
                  state_dir};
    std::vector<std::string> env;
    for (char** e = environ; *e; ++e) {
      if (std::strncmp(*e, "MYCELYA_TOKEN=", 14) != 0) env.emplace_back(*e);
    }
    env.push_back("MYCELYA_TOKEN=" + token_);
    // The server shares this host's cores with its client, whose thread records
    // ops while the server computes: leave it a core, and keep OpenMP threads
    // from spinning between parallel regions.
    if (!std::getenv("OMP_NUM_THREADS")) {
      const long cores = sysconf(_SC_NPROCESSORS_ONLN);
      env.push_back("OMP_NUM_THREADS=" + std::to_string(cores > 1 ? cores - 1 : 1));
    }
    if (!std::getenv("OMP_WAIT_POLICY")) env.push_back("OMP_WAIT_POLICY=PASSIVE");
    child.env = std::move(env);
    // Stdout stays open while the server runs: a write to a closed pipe
    // would kill it.
    child.pipe_stdout = true;
    child.stderr_path = log_;
    child.stop_grace = kTerminateGrace;
    try {
      process_ = std::make_unique<ChildProcess>(child);
    } catch (const std::runtime_error& e) {
      throw std::runtime_error(std::string("local-cuda: ") + e.what());
    }
  }

  // Waits for the server's "listening on" line. Returns "" once it came,
  // else why not (the server exited, or `timeout` passed).
  std::string wait_until_listening(std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    std::string output;
    while (output.find('\n') == std::string::npos) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0)
        return "it did not listen within " + std::to_string(timeout.count() / 1000) + " s";
      pollfd readable{process_->stdout_fd(), POLLIN, 0};
      const int ready = poll(&readable, 1, static_cast<int>(left.count()));
      if (ready < 0 && errno != EINTR) return std::string("poll failed: ") + std::strerror(errno);
      if (ready <= 0) continue;
      char buffer[256];
      const ssize_t n = read(process_->stdout_fd(), buffer, sizeof(buffer));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return "it exited before listening";
      output.append(buffer, static_cast<size_t>(n));
    }
    if (listening_address(output.substr(0, output.find('\n'))).empty()) {
      return "it printed \"" + output.substr(0, output.find('\n')) + "\" instead of its address";
    }
    return "";
  }

  ~ChildServer() { terminate(); }

  std::string address() const { return "unix:" + socket_; }
  const std::string& token() const { return token_; }

  std::string log_tail() const { return tail_of(log_); }

  // Stops the server (SIGTERM, then SIGKILL after kTerminateGrace) and
  // removes its folder.
  void terminate() {
    if (process_) process_->terminate();
    if (!dir_.empty()) {
      unlink(socket_.c_str());
      unlink(log_.c_str());
      rmdir(dir_.c_str());
      dir_.clear();
    }
  }

 private:
  // How long a server gets to exit on SIGTERM before it is killed.
  static constexpr std::chrono::seconds kTerminateGrace{5};

  std::unique_ptr<ChildProcess> process_;
  std::string dir_, socket_, log_, token_;
};

class LocalCudaSession final : public GrpcBackedSession {
 public:
  explicit LocalCudaSession(const MachineSpec& spec) : server_(spec.idle_timeout_s) {
    const std::string error = server_.wait_until_listening(std::chrono::seconds(60));
    if (!error.empty()) {
      const std::string log = server_.log_tail();
      throw std::runtime_error("local-cuda: mycelya-server did not start: " + error +
                               (log.empty() ? "" : "\nserver log:\n" + log));
    }
    GrpcTarget target{server_.address(), server_.token()};
    target.state_key = spec.state_key;
    grpc_ = std::make_unique<GrpcSession>(target, std::chrono::seconds(10));
  }

  ~LocalCudaSession() override { stop(); }

  void stop() override {
    // Ends the session and closes the connection, which lets the server exit
    // at once on SIGTERM.
    if (grpc_) grpc_->stop();
    server_.terminate();
  }

  // Core saved the storages first; they stay in the state folder, which
  // outlives the server.
  bool can_pause() const override { return true; }
  void pause() override { stop(); }

 private:
  ChildServer server_;
};

class LocalCudaProvider final : public Provider {
 public:
  std::string name() const override { return "local-cuda"; }

  std::unique_ptr<Session> start(const MachineSpec& spec, StartProgress& progress) override {
    // The GPU type is whatever this host has; the spec's type only names it.
    progress.stage("waiting for the server");
    return std::make_unique<LocalCudaSession>(spec);
  }

  // A new server on the same state folder: core restores the storages.
  std::unique_ptr<Session> resume(const MachineSpec& spec, StartProgress& progress) override {
    return start(spec, progress);
  }

  void discard(const MachineSpec& spec) override { discard_local_state(spec.state_key); }
};

}  // namespace
}  // namespace mycelya

MYCELYA_DEFINE_PROVIDER(mycelya::LocalCudaProvider)
