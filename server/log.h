// SPDX-License-Identifier: AGPL-3.0-or-later
//
// The server's one logger: whole lines to stderr, prefixed "mycelya-server: ",
// from any thread without interleaving. Stdout is left to the one
// "listening on" line that tells whoever started the server its address.
#pragma once

#include <sstream>
#include <string>

namespace mycelya {

// Writes one line (a newline is added) under a lock.
void log_line(const std::string& line);

template <typename... Parts>
void log(const Parts&... parts) {
  std::ostringstream line;
  line << "mycelya-server: ";
  (line << ... << parts);
  log_line(line.str());
}

}  // namespace mycelya
