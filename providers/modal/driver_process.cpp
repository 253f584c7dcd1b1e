// SPDX-License-Identifier: AGPL-3.0-or-later
#include "providers/modal/driver_process.h"

#include <dlfcn.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <memory>

#include "providers/common/child_process.h"

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
  ChildSpec spec;
  spec.argv = {python, script, command};
  spec.search_path = true;
  spec.pipe_stdin = spec.pipe_stdout = spec.pipe_stderr = true;
  // SIGTERM first: the driver then terminates what it created (a sandbox
  // that would bill on) and says so; SIGKILL after a grace.
  spec.stop_grace = kDriverStopGrace;
  std::unique_ptr<ChildProcess> driver;
  try {
    driver = std::make_unique<ChildProcess>(spec);
  } catch (const std::runtime_error& e) {
    throw std::runtime_error(std::string("modal: cannot start the driver: ") + e.what());
  }
  // The input is small (a few kB): written whole before reading. A driver
  // that died at once makes the write fail, not kill us: Python ignores
  // SIGPIPE in the process that loaded this plugin.
  driver->write_stdin(input.dump());
  driver->close_stdin();

  auto deadline = std::chrono::steady_clock::now() + timeout;
  std::string out_text, err_text, pending;
  nlohmann::json result;
  bool answered = false, timed_out = false, killed = false;
  const int out = driver->stdout_fd(), err = driver->stderr_fd();
  pollfd fds[2] = {{out, POLLIN, 0}, {err, POLLIN, 0}};
  int open_fds = 2;
  while (open_fds > 0) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      if (timed_out) {
        killed = true;
        break;
      }
      // Reading on while the driver cleans up: it says what it terminated.
      timed_out = true;
      driver->signal(SIGTERM);
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
        fd.fd = -1;  // poll skips it; the driver's pipes close with it
        --open_fds;
        continue;
      }
      if (fd.fd == err) {
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
  if (killed) driver->kill();
  const int status = driver->wait();
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
