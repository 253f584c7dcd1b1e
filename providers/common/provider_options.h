// SPDX-License-Identifier: AGPL-3.0-or-later
//
// Reading a provider's options (MachineSpec::options): each is taken once,
// by name, and whatever is left at the end is a name the provider does not
// know. Every problem is a std::invalid_argument that names the option and
// what would be right (ValueError in Python).
#pragma once

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace mycelya {

class ProviderOptions {
 public:
  ProviderOptions(std::string provider, std::map<std::string, std::string> options)
      : provider_(std::move(provider)), options_(std::move(options)) {}

  std::optional<std::string> take(const std::string& name) {
    known_.push_back(name);
    const auto it = options_.find(name);
    if (it == options_.end()) return std::nullopt;
    std::string value = it->second;
    options_.erase(it);
    return value;
  }

  std::string take_or(const std::string& name, const std::string& fallback) {
    return take(name).value_or(fallback);
  }

  bool take_bool(const std::string& name, bool fallback) {
    const std::optional<std::string> value = take(name);
    if (!value) return fallback;
    if (*value == "true") return true;
    if (*value == "false") return false;
    throw error(name + "= must be True or False, got '" + *value + "'");
  }

  // A positive, finite number (seconds, gigabytes, ...).
  double take_positive(const std::string& name, double fallback) {
    const std::optional<std::string> value = take(name);
    if (!value) return fallback;
    errno = 0;
    char* end = nullptr;
    const double number = std::strtod(value->c_str(), &end);
    if (value->empty() || *end != '\0' || errno == ERANGE || !std::isfinite(number) ||
        number <= 0) {
      throw error(name + "= must be a positive number, got '" + *value + "'");
    }
    return number;
  }

  // The text of the file an option names (a certificate, say).
  std::string take_file(const std::string& name) {
    const std::optional<std::string> path = take(name);
    if (!path) return "";
    std::ifstream file(*path, std::ios::binary);
    if (!file) throw error(name + "= names " + *path + ", which cannot be read");
    std::stringstream contents;
    contents << file.rdbuf();
    return contents.str();
  }

  // Call after every take(): refuses the names left over.
  void finish() const {
    if (options_.empty()) return;
    std::string known;
    for (const std::string& name : known_) known += (known.empty() ? "" : ", ") + name + "=";
    throw std::invalid_argument("provider '" + provider_ + "' has no option '" +
                                options_.begin()->first + "'; its options are " + known + ".");
  }

  std::invalid_argument error(const std::string& what) const {
    return std::invalid_argument(provider_ + ": " + what + ".");
  }

 private:
  std::string provider_;
  std::map<std::string, std::string> options_;
  std::vector<std::string> known_;
};

}  // namespace mycelya
