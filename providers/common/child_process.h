// SPDX-License-Identifier: AGPL-3.0-or-later
//
// A child process that never outlives this one, for the providers that run a
// program on this host (local-cuda's mycelya-server, modal's Python driver).
//
// The child gets SIGKILL when the thread that started it dies
// (PR_SET_PDEATHSIG): a crashed client leaves no server or driver behind. Its
// standard streams are pipes to us, a file, or ours, as each caller needs.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <optional>
#include <string>
#include <vector>

namespace mycelya {

struct ChildSpec {
  // argv[0] is the program: a path, or a name looked up on PATH when
  // `search_path` is set.
  std::vector<std::string> argv;
  bool search_path = false;
  // "NAME=value" entries; none given: this process's environment.
  std::optional<std::vector<std::string>> env;
  // A pipe for each stream that is set; the others are this process's,
  // except stderr, which goes to `stderr_path` (truncated, 0600) when given.
  bool pipe_stdin = false;
  bool pipe_stdout = false;
  bool pipe_stderr = false;
  std::string stderr_path;
  // How long terminate() gives the child to exit on SIGTERM before SIGKILL.
  std::chrono::milliseconds stop_grace{5000};
};

class ChildProcess {
 public:
  // Starts the child; throws std::runtime_error when it cannot (a pipe, the
  // stderr file or fork failed). A program that cannot be executed is a
  // child that exits with 127, as in a shell.
  explicit ChildProcess(const ChildSpec& spec);
  // Terminates the child (see terminate): even when the caller left by an
  // exception, the child gets its grace to clean up, then goes.
  ~ChildProcess();

  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  pid_t pid() const { return pid_; }
  // Our ends of the pipes the spec asked for; -1 for the others and once closed.
  int stdin_fd() const { return stdin_; }
  int stdout_fd() const { return stdout_; }
  int stderr_fd() const { return stderr_; }

  // Writes all of `text` to the child's stdin; false when the child stopped
  // reading. Where SIGPIPE is not ignored, such a write kills this process.
  bool write_stdin(const std::string& text);
  void close_stdin();

  // Whether the child still runs; reaps it once it has exited.
  bool running();
  // Sends `signal` to the child while it has not been reaped.
  void signal(int signal);
  // The child's wait status (see waitpid) once it exits; nullopt if it still
  // runs after `timeout`.
  std::optional<int> wait_for(std::chrono::milliseconds timeout);
  // The child's wait status, however long it takes.
  int wait();
  // SIGTERM, then SIGKILL if the child still runs after the spec's
  // stop_grace; reaps it and closes the pipes. A child already reaped is
  // left alone: its pid may belong to another process by now.
  void terminate();
  // SIGKILL at once; reaps the child. For a child already told to stop.
  void kill();

 private:
  void close_pipes();

  std::chrono::milliseconds stop_grace_;
  pid_t pid_ = -1;
  std::optional<int> status_;  // set once reaped
  int stdin_ = -1, stdout_ = -1, stderr_ = -1;
};

}  // namespace mycelya
