// SPDX-License-Identifier: AGPL-3.0-or-later
#include "core/logging.h"

#include <atomic>
#include <cstdio>

namespace mycelya {
namespace {
// Warnings and errors only, like Python's default.
std::atomic<int> g_level{kWarning};
}  // namespace

void set_log_level(int level) { g_level.store(level); }
int log_level() { return g_level.load(); }
bool log_enabled(int level) { return level >= g_level.load(std::memory_order_relaxed); }

void log_message(int level, const std::string& message) {
  const char* name = level >= kError     ? "ERROR"
                     : level >= kWarning ? "WARNING"
                     : level >= kInfo    ? "INFO"
                                         : "DEBUG";
  std::fprintf(stderr, "mycelya_torch %s: %s\n", name, message.c_str());
}

}  // namespace mycelya
