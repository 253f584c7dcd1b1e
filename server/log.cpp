// SPDX-License-Identifier: AGPL-3.0-or-later
#include "server/log.h"

#include <iostream>
#include <mutex>

namespace mycelya {

void log_line(const std::string& line) {
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  std::cerr << line << '\n' << std::flush;
}

}  // namespace mycelya
