// SPDX-License-Identifier: AGPL-3.0-or-later
//
// How mycelya-server's process ends: on SIGTERM or SIGINT (StopSignals), when
// the process that started it dies (ParentWatch, for --exit-with-parent), or
// when no client has done anything for a while (IdleWatch, --idle-timeout).
#pragma once

#include <signal.h>
#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

namespace mycelya {

// SIGTERM and SIGINT are blocked in every thread and taken by one thread with
// sigwait, so stopping runs as ordinary code rather than in a signal handler
// (where calling into gRPC is not allowed). A second signal exits at once.
class StopSignals {
 public:
  StopSignals();
  // Stops the thread if it still runs: every way out of main is safe.
  ~StopSignals();

  // Must run before any thread starts, so every thread inherits the mask.
  void block();
  void start();
  // Blocks until SIGTERM or SIGINT arrives; returns its name.
  std::string wait();
  void stop();

 private:
  sigset_t set_;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  int received_ = 0;
  bool finished_ = false;
};

// A thread that watches for a reason to stop this process, until stop().
// Each subclass's destructor stops it, before the subclass's members that
// its check reads are gone, so a return from anywhere in main never leaves a
// running std::thread to std::terminate.
class Watch {
 public:
  Watch() = default;
  Watch(const Watch&) = delete;
  Watch& operator=(const Watch&) = delete;

  void stop();

 protected:
  ~Watch() = default;  // not deleted through a Watch*

  // Runs `check` on the watch thread, holding the lock, until it returns true
  // (it has stopped the process) or stop() is called; `check` waits on the
  // condition variable it is given between looks, so stop() wakes it.
  void watch(std::function<bool(std::unique_lock<std::mutex>&, std::condition_variable&)> check);

 private:
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopped_ = false;
};

// Sends this process SIGTERM once `parent` is gone. PR_SET_PDEATHSIG acts at
// once but misses a parent that died before it was set (and is dropped
// across a setuid exec), so a poll of getppid() backs it up: once the parent
// dies the process is reparented and getppid() changes. It also follows the
// parent *thread*: a parent that spawns the server from a short-lived thread
// stops it when that thread ends.
class ParentWatch : public Watch {
 public:
  explicit ParentWatch(pid_t parent) : parent_(parent) {}
  ~ParentWatch() { stop(); }

  void start();

 private:
  const pid_t parent_;
};

// Sends this process SIGTERM, with a log line saying why, once
// `last_activity()` is `timeout` in the past: a cloud machine whose client
// vanished (a closed laptop, a killed process) stops billing by itself.
class IdleWatch : public Watch {
 public:
  IdleWatch(std::chrono::seconds timeout,
            std::function<std::chrono::steady_clock::time_point()> last_activity)
      : timeout_(timeout), last_activity_(std::move(last_activity)) {}
  ~IdleWatch() { stop(); }

  void start();

 private:
  const std::chrono::seconds timeout_;
  const std::function<std::chrono::steady_clock::time_point()> last_activity_;
};

}  // namespace mycelya
