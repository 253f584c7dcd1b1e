// SPDX-License-Identifier: AGPL-3.0-or-later
//
// Core's log sink. Levels follow Python's logging numbers so the Python
// package's set_logging_level() controls both sides with one value.
#pragma once

#include <string>

namespace mycelya {

enum LogLevel : int { kDebug = 10, kInfo = 20, kWarning = 30, kError = 40, kOff = 100 };

void set_log_level(int level);
int log_level();
bool log_enabled(int level);
void log_message(int level, const std::string& message);

inline void log_debug(const std::string& message) {
  if (log_enabled(kDebug)) log_message(kDebug, message);
}
inline void log_info(const std::string& message) {
  if (log_enabled(kInfo)) log_message(kInfo, message);
}
inline void log_warning(const std::string& message) {
  if (log_enabled(kWarning)) log_message(kWarning, message);
}

}  // namespace mycelya
