// SPDX-License-Identifier: AGPL-3.0-or-later
#include "providers/common/child_process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <thread>

namespace mycelya {
namespace {

// Our end and the child's end of one standard stream; -1 where unused.
// O_CLOEXEC everywhere: the child keeps only what it dup2()s onto 0, 1, 2,
// and a child started by another thread meanwhile inherits none of them.
struct Stream {
  int ours = -1;
  int theirs = -1;
};

void close_fd(int& fd) {
  if (fd >= 0) close(fd);
  fd = -1;
}

std::string error_text(const std::string& what) { return what + ": " + std::strerror(errno); }

// A pipe whose read end is ours (`child_writes`) or the child's.
Stream make_pipe(bool child_writes) {
  int ends[2];
  if (pipe2(ends, O_CLOEXEC) != 0) throw std::runtime_error(error_text("cannot create a pipe"));
  return child_writes ? Stream{ends[0], ends[1]} : Stream{ends[1], ends[0]};
}

std::vector<char*> pointers_to(std::vector<std::string>& strings) {
  std::vector<char*> pointers;
  for (std::string& s : strings) pointers.push_back(s.data());
  pointers.push_back(nullptr);
  return pointers;
}

}  // namespace

ChildProcess::ChildProcess(const ChildSpec& spec) : stop_grace_(spec.stop_grace) {
  if (spec.argv.empty()) throw std::invalid_argument("ChildProcess: no program to run");
  // Everything the child needs is prepared before fork: after it, only
  // async-signal-safe calls until exec.
  std::vector<std::string> argv_strings = spec.argv;
  std::vector<char*> argv = pointers_to(argv_strings);
  std::vector<std::string> env_strings;
  if (spec.env) {
    env_strings = *spec.env;
  } else {
    for (char** e = environ; *e; ++e) env_strings.emplace_back(*e);
  }
  std::vector<char*> envp = pointers_to(env_strings);

  Stream in, out, err;
  const auto close_all = [&] {
    for (Stream* s : {&in, &out, &err}) {
      close_fd(s->ours);
      close_fd(s->theirs);
    }
  };
  try {
    if (spec.pipe_stdin) in = make_pipe(false);
    if (spec.pipe_stdout) out = make_pipe(true);
    if (spec.pipe_stderr) {
      err = make_pipe(true);
    } else if (!spec.stderr_path.empty()) {
      err.theirs = open(spec.stderr_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
      if (err.theirs < 0) throw std::runtime_error(error_text("cannot create " + spec.stderr_path));
    }
  } catch (...) {
    close_all();
    throw;
  }
  const pid_t parent = getpid();

  pid_ = fork();
  if (pid_ < 0) {
    const std::string error = error_text("fork failed");
    close_all();
    throw std::runtime_error(error);
  }
  if (pid_ == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(1);  // the parent died before prctl
    if (in.theirs >= 0) dup2(in.theirs, STDIN_FILENO);
    if (out.theirs >= 0) dup2(out.theirs, STDOUT_FILENO);
    if (err.theirs >= 0) dup2(err.theirs, STDERR_FILENO);
    if (spec.search_path) {
      execvpe(argv[0], argv.data(), envp.data());
    } else {
      execve(argv[0], argv.data(), envp.data());
    }
    _exit(127);
  }
  close_fd(in.theirs);
  close_fd(out.theirs);
  close_fd(err.theirs);
  stdin_ = in.ours;
  stdout_ = out.ours;
  stderr_ = err.ours;
}

ChildProcess::~ChildProcess() { terminate(); }

bool ChildProcess::write_stdin(const std::string& text) {
  for (size_t written = 0; written < text.size();) {
    const ssize_t n = write(stdin_, text.data() + written, text.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    written += static_cast<size_t>(n);
  }
  return true;
}

void ChildProcess::close_stdin() { close_fd(stdin_); }

bool ChildProcess::running() {
  if (status_) return false;
  int status = 0;
  if (waitpid(pid_, &status, WNOHANG) != pid_) return true;
  status_ = status;
  return false;
}

void ChildProcess::signal(int signal) {
  if (!status_) ::kill(pid_, signal);
}

std::optional<int> ChildProcess::wait_for(std::chrono::milliseconds timeout) {
  // Polled finely: a server with no session left exits within tens of ms.
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (running()) {
    if (std::chrono::steady_clock::now() >= deadline) return std::nullopt;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return status_;
}

int ChildProcess::wait() {
  while (!status_) {
    int status = 0;
    if (waitpid(pid_, &status, 0) == pid_) {
      status_ = status;
    } else if (errno != EINTR) {
      status_ = -1;  // not our child any more: nothing left to wait for
    }
  }
  return *status_;
}

void ChildProcess::kill() {
  signal(SIGKILL);
  wait();
}

void ChildProcess::terminate() {
  if (!status_) {
    ::kill(pid_, SIGTERM);
    if (!wait_for(stop_grace_)) kill();
  }
  close_pipes();
}

void ChildProcess::close_pipes() {
  close_fd(stdin_);
  close_fd(stdout_);
  close_fd(stderr_);
}

}  // namespace mycelya
