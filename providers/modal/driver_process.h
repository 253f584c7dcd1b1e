// SPDX-License-Identifier: AGPL-3.0-or-later
//
// Runs the modal provider's driver (python/mycelya_torch/_modal_driver.py)
// with the user's Python interpreter: one command per process, a JSON object
// on its stdin, JSON lines back on its stdout ({"stage": ...} while it works,
// then {"ok": {...}} or {"error": ..., "kind": ...}).
#pragma once

#include <chrono>
#include <functional>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

namespace mycelya {

// The driver's {"error", "kind"} answer: kind is "auth", "capacity" or "other".
class DriverError : public std::runtime_error {
 public:
  DriverError(std::string kind, const std::string& message)
      : std::runtime_error(message), kind_(std::move(kind)) {}
  const std::string& kind() const { return kind_; }

 private:
  std::string kind_;
};

// Runs `command` with `input`; calls `on_stage` for each stage line and
// returns the "ok" object. Throws DriverError for the driver's own error and
// std::runtime_error when the driver cannot run, dies, or outlives `timeout`
// (then it is killed), with its stderr's tail.
nlohmann::json run_driver(const std::string& command, const nlohmann::json& input,
                          const std::function<void(const std::string&)>& on_stage,
                          std::chrono::seconds timeout);

// A command that reports no stages (terminate, logs, discard).
inline nlohmann::json run_driver(const std::string& command, const nlohmann::json& input,
                                 std::chrono::seconds timeout) {
  return run_driver(
      command, input, [](const std::string&) {}, timeout);
}

}  // namespace mycelya
