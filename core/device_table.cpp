// SPDX-License-Identifier: AGPL-3.0-or-later
#include "core/device_table.h"

#include <c10/util/Exception.h>

#include <mutex>

namespace mycelya {
namespace {

std::mutex& table_mutex() {
  static std::mutex mu;
  return mu;
}

std::vector<DeviceEntry>& table() {
  static std::vector<DeviceEntry> entries;
  return entries;
}

}  // namespace

c10::DeviceIndex register_device(const std::shared_ptr<Machine>& machine, int slot) {
  std::lock_guard<std::mutex> lock(table_mutex());
  auto& entries = table();
  for (size_t i = 0; i < entries.size(); ++i) {
    if (entries[i].machine == machine && entries[i].slot == slot) {
      return static_cast<c10::DeviceIndex>(i);
    }
  }
  TORCH_CHECK(static_cast<c10::DeviceIndex>(entries.size()) < kMaxDevices,
              "Too many mycelya devices in one process (the limit is ", kMaxDevices,
              "); reuse machines instead of creating new ones.");
  entries.push_back({machine, slot, machine->devices().at(slot)});
  return static_cast<c10::DeviceIndex>(entries.size() - 1);
}

DeviceEntry lookup_device(c10::DeviceIndex index) {
  std::lock_guard<std::mutex> lock(table_mutex());
  const auto& entries = table();
  TORCH_CHECK(index >= 0 && index < static_cast<c10::DeviceIndex>(entries.size()),
              "mycelya:", static_cast<int>(index),
              " is not a device of any RemoteMachine; use machine.device() to get one.");
  return entries[index];
}

int registered_device_count() {
  std::lock_guard<std::mutex> lock(table_mutex());
  return static_cast<int>(table().size());
}

std::vector<std::shared_ptr<Machine>> all_registered_machines() {
  std::lock_guard<std::mutex> lock(table_mutex());
  std::vector<std::shared_ptr<Machine>> machines;
  for (const auto& entry : table()) {
    bool seen = false;
    for (const auto& m : machines) seen = seen || m == entry.machine;
    if (!seen) machines.push_back(entry.machine);
  }
  return machines;
}

}  // namespace mycelya
