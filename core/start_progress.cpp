// SPDX-License-Identifier: AGPL-3.0-or-later
#include "core/start_progress.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "core/logging.h"

namespace mycelya {
namespace {

bool show_line() {
  const char* env = std::getenv("MYCELYA_PROGRESS");
  if (env && std::strcmp(env, "0") == 0) return false;
  return isatty(STDERR_FILENO) && log_enabled(kWarning);
}

std::string seconds(double s) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.1f s", s);
  return text;
}

}  // namespace

TerminalStartProgress::TerminalStartProgress(std::string what) : what_(std::move(what)) {
  if (show_line()) ticker_ = std::thread([this] { ticker_loop(); });
}

TerminalStartProgress::~TerminalStartProgress() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    done_ = true;
  }
  cv_.notify_all();
  if (ticker_.joinable()) ticker_.join();
  if (finished_) log_info(what_ + ": started in " + seconds(elapsed_s()));
}

double TerminalStartProgress::elapsed_s() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - begin_).count();
}

void TerminalStartProgress::stage(const std::string& what) {
  log_info(what_ + ": " + what + " (" + seconds(elapsed_s()) + " in)");
  std::lock_guard<std::mutex> lock(mu_);
  stage_ = what;
  if (ticker_.joinable()) draw_locked();
}

void TerminalStartProgress::draw_locked() {
  // \r and erase-line: the line is rewritten in place, never scrolled.
  std::fprintf(stderr, "\r\033[K%s: %s ... %.0f s", what_.c_str(), stage_.c_str(), elapsed_s());
  std::fflush(stderr);
  drawn_ = true;
}

void TerminalStartProgress::ticker_loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!done_) {
    // A start shorter than a second (mock, local-cuda) draws nothing.
    cv_.wait_for(lock, std::chrono::seconds(1));
    if (done_) break;
    if (!stage_.empty()) draw_locked();
  }
  if (drawn_) {
    std::fprintf(stderr, "\r\033[K");
    std::fflush(stderr);
  }
}

}  // namespace mycelya
