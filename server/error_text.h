// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <c10/util/Exception.h>

#include <exception>
#include <string>

namespace mycelya {

// An exception's message for the client: a c10::Error's without the C++
// backtrace, which tells a user of the machine nothing.
inline std::string error_text(const std::exception& e) {
  if (auto* c10_error = dynamic_cast<const c10::Error*>(&e))
    return c10_error->what_without_backtrace();
  return e.what();
}

}  // namespace mycelya
