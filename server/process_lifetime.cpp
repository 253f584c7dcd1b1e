// SPDX-License-Identifier: AGPL-3.0-or-later
#include "server/process_lifetime.h"

#include <pthread.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>

#include "server/log.h"

namespace mycelya {
namespace {

const char* signal_name(int signal) { return signal == SIGINT ? "SIGINT" : "SIGTERM"; }

}  // namespace

StopSignals::StopSignals() {
  sigemptyset(&set_);
  sigaddset(&set_, SIGTERM);
  sigaddset(&set_, SIGINT);
}

void StopSignals::block() { pthread_sigmask(SIG_BLOCK, &set_, nullptr); }

void StopSignals::start() {
  thread_ = std::thread([this] {
    while (true) {
      int signal = 0;
      if (sigwait(&set_, &signal) != 0) continue;
      std::lock_guard<std::mutex> lock(mu_);
      if (finished_) return;
      if (received_ != 0) {
        // A second signal means whoever sent it will not wait for a slow op.
        log("second ", signal_name(signal), ", exiting without waiting");
        std::_Exit(1);
      }
      received_ = signal;
      cv_.notify_all();
    }
  });
}

std::string StopSignals::wait() {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [this] { return received_ != 0; });
  return signal_name(received_);
}

StopSignals::~StopSignals() { stop(); }

void StopSignals::stop() {
  if (!thread_.joinable()) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    finished_ = true;
  }
  // Wakes the sigwait; the thread sees finished_ and ends.
  pthread_kill(thread_.native_handle(), SIGTERM);
  thread_.join();
}

void Watch::watch(
    std::function<bool(std::unique_lock<std::mutex>&, std::condition_variable&)> check) {
  thread_ = std::thread([this, check = std::move(check)] {
    std::unique_lock<std::mutex> lock(mu_);
    while (!stopped_) {
      if (check(lock, cv_)) return;
    }
  });
}

void Watch::stop() {
  if (!thread_.joinable()) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopped_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void ParentWatch::start() {
  prctl(PR_SET_PDEATHSIG, SIGTERM);
  watch([this](std::unique_lock<std::mutex>& lock, std::condition_variable& cv) {
    if (getppid() != parent_) {
      log("the parent process ", parent_, " is gone, stopping");
      kill(getpid(), SIGTERM);
      return true;
    }
    cv.wait_for(lock, std::chrono::milliseconds(200));
    return false;
  });
}

void IdleWatch::start() {
  watch([this](std::unique_lock<std::mutex>& lock, std::condition_variable& cv) {
    const auto idle_until = last_activity_() + timeout_;
    if (std::chrono::steady_clock::now() >= idle_until) {
      log("no client activity for ", timeout_.count(), " s (--idle-timeout), stopping");
      kill(getpid(), SIGTERM);
      return true;
    }
    // Activity moves the deadline later, never earlier: waking at the
    // current one is enough.
    cv.wait_until(lock, idle_until);
    return false;
  });
}

}  // namespace mycelya
