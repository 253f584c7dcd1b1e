// SPDX-License-Identifier: AGPL-3.0-or-later
#include "providers/modal/driver_process.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace mycelya {
namespace {

// The interpreter: the Python package sets MYCELYA_PYTHON to sys.executable,
// so the driver sees the user's environment (and its modal SDK).
std::string interpreter() {
  const char* python = std::getenv("MYCELYA_PYTHON");
  return python && *python ? python : "python3";
}

// _modal_driver.py, beside this plugin in the package folder.
std::string driver_script() {
  Dl_info info;
  if (dladdr(reinterpret_cast<void*>(&driver_script), &info) && info.dli_fname) {
    const std::string path = info.dli_fname;
    return path.substr(0, path.rfind('/') + 1) + "_modal_driver.py";
  }
  return "_modal_driver.py";
}

// How long a driver told to stop gets to clean up before it is killed.
constexpr std::chrono::seconds kDriverStopGrace{30};

std::string tail(const std::string& text, size_t max_bytes = 2000) {
  return text.size() > max_bytes ? "..." + text.substr(text.size() - max_bytes) : text;
}

}  // namespace

nlohmann::json run_driver(const std::string& command, const nlohmann::json& input,
                          const std::function<void(const std::string&)>& on_stage,
                          std::chrono::seconds timeout) {
  const std::string python = interpreter();
  const std::string script = driver_script();
  const char* argv[] = {python.c_str(), script.c_str(), command.c_str(), nullptr};
  int in[2], out[2], err[2];
  if (pipe2(in, O_CLOEXEC) != 0) throw std::runtime_error("modal: cannot create a pipe");
  if (pipe2(out, O_CLOEXEC) != 0 || pipe2(err, O_CLOEXEC) != 0) {
    close(in[0]);
    close(in[1]);
    throw std::runtime_error("modal: cannot create a pipe");
  }
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(1);
    dup2(in[0], STDIN_FILENO);
    dup2(out[1], STDOUT_FILENO);
    dup2(err[1], STDERR_FILENO);
    execvp(argv[0], const_cast<char* const*>(argv));
    _exit(127);
  }
  close(in[0]);
  close(out[1]);
  close(err[1]);
  if (pid < 0) {
    close(in[1]);
    close(out[0]);
    close(err[0]);
    throw std::runtime_error(std::string("modal: cannot start the driver: ") +
                             std::strerror(errno));
  }
  // The input is small (a few kB): written whole before reading. A driver
  // that died at once makes the write fail, not kill us: Python ignores
  // SIGPIPE in the process that loaded this plugin.
  const std::string text = input.dump();
  for (size_t written = 0; written < text.size();) {
    const ssize_t n = write(in[1], text.data() + written, text.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    written += static_cast<size_t>(n);
  }
  close(in[1]);

  auto deadline = std::chrono::steady_clock::now() + timeout;
  std::string out_text, err_text, pending;
  nlohmann::json result;
  bool answered = false, timed_out = false, killed = false;
  pollfd fds[2] = {{out[0], POLLIN, 0}, {err[0], POLLIN, 0}};
  int open_fds = 2;
  while (open_fds > 0) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      if (timed_out) {
        killed = true;
        break;
      }
      // SIGTERM first: the driver then terminates what it created (a
      // sandbox that would bill on) and says so; SIGKILL after a grace.
      timed_out = true;
      kill(pid, SIGTERM);
      deadline = std::chrono::steady_clock::now() + kDriverStopGrace;
      continue;
    }
    if (poll(fds, 2, static_cast<int>(left.count())) < 0 && errno != EINTR) break;
    for (pollfd& fd : fds) {
      if (fd.fd < 0 || !(fd.revents & (POLLIN | POLLHUP | POLLERR))) continue;
      char buffer[4096];
      const ssize_t n = read(fd.fd, buffer, sizeof(buffer));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        close(fd.fd);
        fd.fd = -1;
        --open_fds;
        continue;
      }
      if (fd.fd == err[0]) {
        err_text = tail(err_text + std::string(buffer, static_cast<size_t>(n)), 8000);
        continue;
      }
      pending.append(buffer, static_cast<size_t>(n));
      for (size_t end; (end = pending.find('\n')) != std::string::npos;) {
        const std::string line = pending.substr(0, end);
        pending.erase(0, end + 1);
        const nlohmann::json message = nlohmann::json::parse(line, nullptr, false);
        if (!message.is_object()) {
          out_text += line + "\n";
        } else if (message.contains("stage") && message["stage"].is_string()) {
          on_stage(message["stage"].get<std::string>());
        } else if (message.contains("ok") || message.contains("error")) {
          result = message;
          answered = true;
        }
      }
    }
  }
  for (const pollfd& fd : fds) {
    if (fd.fd >= 0) close(fd.fd);
  }
  if (killed) kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  // An answer that came before the deadline counts, even if the driver then
  // took long to exit: a started sandbox must not be dropped.
  if (timed_out && !(answered && result.contains("ok"))) {
    throw std::runtime_error("modal: the driver's " + command + " took longer than " +
                             std::to_string(timeout.count()) + " s and was stopped." +
                             (err_text.empty() ? "" : "\nIts output:\n" + tail(err_text)));
  }
  if (answered && result.contains("error")) {
    throw DriverError(result.value("kind", "other"), result.value("error", "unknown error"));
  }
  if (!answered || !result["ok"].is_object()) {
    const bool no_python = WIFEXITED(status) && WEXITSTATUS(status) == 127;
    throw std::runtime_error(
        "modal: the driver (" + python + " " + script + " " + command + ") " +
        (no_python ? "could not run: is " + python + " a Python interpreter?"
                   : "ended without an answer") +
        (err_text.empty() ? "" : "\nIts output:\n" + tail(err_text + out_text)));
  }
  return result["ok"];
}

}  // namespace mycelya
