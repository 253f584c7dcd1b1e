// SPDX-License-Identifier: AGPL-3.0-or-later
//
// Secrets the protocol carries (a local server's token, a machine's state
// key): random bytes from the kernel, written as lowercase hex digits.
#pragma once

#include <cstddef>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace mycelya {

// `bytes` random bytes as 2 * `bytes` hex digits; `what` names the secret in
// the error when /dev/urandom cannot be read.
inline std::string random_hex(size_t bytes, const std::string& what) {
  std::vector<unsigned char> random(bytes);
  std::ifstream urandom("/dev/urandom", std::ios::binary);
  if (!urandom.read(reinterpret_cast<char*>(random.data()), static_cast<std::streamsize>(bytes))) {
    throw std::runtime_error("cannot read /dev/urandom for " + what);
  }
  static const char hex[] = "0123456789abcdef";
  std::string text;
  for (const unsigned char b : random) {
    text += hex[b >> 4];
    text += hex[b & 15];
  }
  return text;
}

}  // namespace mycelya
