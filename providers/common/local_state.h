// SPDX-License-Identifier: AGPL-3.0-or-later
//
// Where the providers that run their server on this host (mock, local-cuda)
// keep paused machines' storages: $MYCELYA_HOME/state, else
// ~/.cache/mycelya/state, on disk rather than in /tmp, which may be memory.
// Each machine's folder is <root>/<its state key> (server/state_folder.h).
#pragma once

#include <cstdlib>
#include <string>

#include "server/state_folder.h"

namespace mycelya {

inline std::string local_state_root() {
  if (const char* home = std::getenv("MYCELYA_HOME"); home && *home) {
    return std::string(home) + "/state";
  }
  const char* user_home = std::getenv("HOME");
  return std::string(user_home && *user_home ? user_home : "/tmp") + "/.cache/mycelya/state";
}

// Drops a machine's saved storages (it stopped for good).
inline void discard_local_state(const std::string& state_key) {
  if (valid_state_key(state_key)) StateFolder(local_state_root() + "/" + state_key).clear();
}

}  // namespace mycelya
