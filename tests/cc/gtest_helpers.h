// SPDX-License-Identifier: AGPL-3.0-or-later
//
// Small GoogleTest helpers shared by the C++ suites.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

namespace mycelya {

// The whole contents of a file ("" when it cannot be read).
inline std::string read_whole(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  std::stringstream contents;
  contents << file.rdbuf();
  return contents.str();
}

// The runfiles folder of a package of this workspace (the package's own path
// outside Bazel).
inline std::string runfiles_dir(const std::string& package) {
  const char* srcdir = std::getenv("TEST_SRCDIR");
  const char* workspace = std::getenv("TEST_WORKSPACE");
  if (srcdir == nullptr || workspace == nullptr) return package;
  return std::string(srcdir) + "/" + workspace + "/" + package;
}

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
