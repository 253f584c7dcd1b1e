// SPDX-License-Identifier: AGPL-3.0-or-later
//
// The local-cuda provider: runs mycelya-server as a child process of this
// one, on a Unix socket in a fresh private folder with a fresh token, and
// talks to it over the shared gRPC transport. The server serves cuda where
// this host has GPUs and cpu always.
//
// The child never outlives us: it gets SIGKILL when the thread that started
// it dies (PR_SET_PDEATHSIG) and also watches its parent (--exit-with-parent);
// stop() sends SIGTERM and, after a grace period, SIGKILL.
//
// Pausing: the server keeps paused sessions under local_state_root()
// (--state-dir), so a server started later on the same folder restores them.
//
// Start-up waits for the one line the server prints to stdout once it
// listens (a pipe here), then connects: no connection attempt can find the
// socket missing and leave gRPC's channel in its reconnect backoff.
#include <dlfcn.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "core/provider.h"
#include "proto/random_key.h"
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

    // Everything the child needs is prepared before fork: after it, only
    // async-signal-safe calls until exec.
    const std::string listen = "--listen=unix:" + socket_;
    // Whole seconds, rounded up (never sooner than asked), at most the
    // server's year.
    const double idle_seconds = std::min(std::ceil(idle_timeout_s), 365.0 * 24 * 3600);
    const std::string idle_timeout =
        "--idle-timeout=" + std::to_string(static_cast<long long>(idle_seconds));
    const char* argv[] = {
        binary.c_str(),       listen.c_str(),       "--token-env=MYCELYA_TOKEN", "--devices=auto",
        "--exit-with-parent", idle_timeout.c_str(), state_dir.c_str(),           nullptr};
    std::vector<std::string> env_strings;
    for (char** e = environ; *e; ++e) {
      if (std::strncmp(*e, "MYCELYA_TOKEN=", 14) != 0) env_strings.emplace_back(*e);
    }
    env_strings.push_back("MYCELYA_TOKEN=" + token_);
    // The server shares this host's cores with its client, whose thread records
    // ops while the server computes: leave it a core, and keep OpenMP threads
    // from spinning between parallel regions.
    if (!std::getenv("OMP_NUM_THREADS")) {
      const long cores = sysconf(_SC_NPROCESSORS_ONLN);
      env_strings.push_back("OMP_NUM_THREADS=" + std::to_string(cores > 1 ? cores - 1 : 1));
    }
    if (!std::getenv("OMP_WAIT_POLICY")) env_strings.push_back("OMP_WAIT_POLICY=PASSIVE");
    std::vector<char*> envp;
    for (auto& s : env_strings) envp.push_back(s.data());
    envp.push_back(nullptr);
    const int log_fd = open(log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (log_fd < 0) throw std::runtime_error("local-cuda: cannot create " + log_);
    int stdout_pipe[2];
    if (pipe2(stdout_pipe, O_CLOEXEC) != 0) {
      close(log_fd);
      throw std::runtime_error("local-cuda: cannot create a pipe for the server's output");
    }
    const pid_t parent = getpid();

    pid_ = fork();
    if (pid_ < 0) {
      close(log_fd);
      close(stdout_pipe[0]);
      close(stdout_pipe[1]);
      throw std::runtime_error(std::string("local-cuda: fork failed: ") + std::strerror(errno));
    }
    if (pid_ == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(1);  // the parent died before prctl
      dup2(stdout_pipe[1], STDOUT_FILENO);
      dup2(log_fd, STDERR_FILENO);
      execve(argv[0], const_cast<char* const*>(argv), envp.data());
      _exit(127);
    }
    close(log_fd);
    close(stdout_pipe[1]);
    // Kept open while the server runs: a write to a closed pipe would kill it.
    stdout_ = stdout_pipe[0];
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
      pollfd readable{stdout_, POLLIN, 0};
      const int ready = poll(&readable, 1, static_cast<int>(left.count()));
      if (ready < 0 && errno != EINTR) return std::string("poll failed: ") + std::strerror(errno);
      if (ready <= 0) continue;
      char buffer[256];
      const ssize_t n = read(stdout_, buffer, sizeof(buffer));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return "it exited before listening";
      output.append(buffer, static_cast<size_t>(n));
    }
    if (output.rfind("mycelya-server listening on ", 0) != 0) {
      return "it printed \"" + output.substr(0, output.find('\n')) + "\" instead of its address";
    }
    return "";
  }

  ~ChildServer() { terminate(); }

  std::string address() const { return "unix:" + socket_; }
  const std::string& token() const { return token_; }

  bool alive() {
    if (pid_ <= 0) return false;
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return false;
    }
    return true;
  }

  std::string log_tail() const { return tail_of(log_); }

  void terminate() {
    if (pid_ > 0) {
      kill(pid_, SIGTERM);
      // Polled finely: a server with no session left exits within tens of ms.
      const auto deadline = std::chrono::steady_clock::now() + kTerminateGrace;
      while (alive() && std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
      }
      if (pid_ > 0) {
        kill(pid_, SIGKILL);
        waitpid(pid_, nullptr, 0);
        pid_ = -1;
      }
    }
    if (stdout_ >= 0) {
      close(stdout_);
      stdout_ = -1;
    }
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

  pid_t pid_ = -1;
  int stdout_ = -1;  // read end of the server's stdout
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
