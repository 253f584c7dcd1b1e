// SPDX-License-Identifier: AGPL-3.0-or-later
//
// The one line mycelya-server prints to stdout once it listens,
// "mycelya-server listening on <address>", with the real address (the port it
// picked when asked for port 0). Whoever started the server waits for it, so
// never connects before the server listens, and learns where to connect.
// Python's reader is tests/listening_line.py.
#pragma once

#include <string>

namespace mycelya {

inline constexpr char kListeningPrefix[] = "mycelya-server listening on ";

// The line for `address`, without its newline.
inline std::string listening_line(const std::string& address) { return kListeningPrefix + address; }

// The address in a listening line (without its newline); "" for any other line.
inline std::string listening_address(const std::string& line) {
  const std::string prefix = kListeningPrefix;
  if (line.rfind(prefix, 0) != 0) return "";
  return line.substr(prefix.size());
}

}  // namespace mycelya
