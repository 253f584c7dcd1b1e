// SPDX-License-Identifier: AGPL-3.0-or-later
//
// Shows what a machine's start waits for: each stage goes to the log (INFO,
// with the time since the start began), and on an interactive terminal one
// line on stderr shows the current stage and the seconds ticking, so a
// ten-minute cloud start is never a silent hang. MYCELYA_PROGRESS=0 turns the
// line off; logging off (the level above WARNING) does too.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>

#include "core/provider.h"

namespace mycelya {

class TerminalStartProgress final : public StartProgress {
 public:
  // `what`: the start, as the line names it ("starting machine runpod-12-1").
  explicit TerminalStartProgress(std::string what);
  // Clears the line; logs how long the start took when `finished()` was called.
  ~TerminalStartProgress() override;

  void stage(const std::string& what) override;
  // The start succeeded: logged once the line is cleared.
  void finished() { finished_ = true; }

 private:
  void ticker_loop();
  double elapsed_s() const;
  void draw_locked();  // caller holds mu_

  const std::string what_;
  const std::chrono::steady_clock::time_point begin_ = std::chrono::steady_clock::now();
  bool finished_ = false;
  std::mutex mu_;
  std::condition_variable cv_;
  std::string stage_;
  bool done_ = false;
  bool drawn_ = false;
  std::thread ticker_;
};

}  // namespace mycelya
