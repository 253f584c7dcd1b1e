// SPDX-License-Identifier: AGPL-3.0-or-later
//
// Small GoogleTest helpers shared by the C++ suites.
#pragma once

#include <gtest/gtest.h>

#include <string>

namespace mycelya {

// EXPECT_TRUE(Contains(message, "aten::mm")) prints both strings on failure.
inline ::testing::AssertionResult Contains(const std::string& haystack, const std::string& needle) {
  if (haystack.find(needle) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << "\"" << haystack << "\" does not contain \"" << needle << "\"";
}

// The message of the exception of type E that `f` throws ("" and a failure if none).
template <typename E, typename F>
std::string message_of(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected an exception";
  return "";
}

}  // namespace mycelya
