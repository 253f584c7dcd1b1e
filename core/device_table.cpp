// SPDX-License-Identifier: AGPL-3.0-or-later
#include "core/device_table.h"

#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <c10/util/Exception.h>

#include <array>
#include <cstdint>
#include <mutex>
#include <stdexcept>

#include "core/machine.h"

namespace mycelya {
namespace {

struct Table {
  std::mutex mu;
  std::array<DeviceRef, kMaxDevices> entries;
};

Table& table() {
  static Table* instance = new Table();  // never destroyed: tensors may die after exit
  return *instance;
}

}  // namespace

std::vector<DeviceRef> register_machine(const std::shared_ptr<Machine>& machine,
                                        const std::vector<std::string>& devices,
                                        const std::vector<std::string>& properties) {
  std::vector<wire::DeviceProperties> decoded(devices.size());
  if (properties.size() != devices.size()) {
    throw std::runtime_error("Machine " + machine->id() + " serves " +
                             std::to_string(devices.size()) + " devices but describes " +
                             std::to_string(properties.size()));
  }
  for (size_t slot = 0; slot < devices.size(); ++slot) {
    if (!decoded[slot].ParseFromString(properties[slot])) {
      throw std::runtime_error("Machine " + machine->id() + " sent an unreadable description of " +
                               devices[slot]);
    }
  }
  Table& t = table();
  std::lock_guard<std::mutex> lock(t.mu);
  std::vector<c10::DeviceIndex> free;
  for (c10::DeviceIndex i = 0; i < kMaxDevices; ++i) {
    if (!t.entries[i]) free.push_back(i);
  }
  if (free.size() < devices.size()) {
    throw std::runtime_error(
        "Too many mycelya devices in use: machine " + machine->id() + " needs " +
        std::to_string(devices.size()) + " and " + std::to_string(free.size()) +
        " of the limit of " + std::to_string(static_cast<int>(kMaxDevices)) +
        " are free. Stop machines you no longer use (machine.stop()) before starting more.");
  }
  std::vector<DeviceRef> entries;
  for (size_t slot = 0; slot < devices.size(); ++slot) {
    const c10::DeviceIndex index = free[slot];
    auto entry = std::make_shared<const DeviceEntry>(machine, static_cast<int>(slot), devices[slot],
                                                     decoded[slot], index);
    t.entries[index] = entry;
    entries.push_back(std::move(entry));
  }
  return entries;
}

void adopt_as_current_if_unset(const std::vector<DeviceRef>& entries) {
  if (entries.empty()) return;
  const auto* guard = c10::impl::getDeviceGuardImpl(c10::DeviceType::PrivateUse1);
  const c10::DeviceIndex current = guard->getDevice().index();
  {
    Table& t = table();
    std::lock_guard<std::mutex> lock(t.mu);
    if (current >= 0 && current < kMaxDevices && t.entries[current]) return;
  }
  DeviceRef chosen = entries.front();
  for (const DeviceRef& entry : entries) {
    if (entry->remote_name.rfind("cuda", 0) == 0) {
      chosen = entry;
      break;
    }
    if (is_remote_cpu(*entry) && !is_remote_cpu(*chosen)) chosen = entry;
  }
  guard->uncheckedSetDevice(c10::Device(c10::DeviceType::PrivateUse1, chosen->index));
}

void release_machine(const std::vector<DeviceRef>& entries) {
  Table& t = table();
  std::lock_guard<std::mutex> lock(t.mu);
  for (const DeviceRef& entry : entries) {
    entry->stopped.store(true);
    if (t.entries[entry->index] == entry) t.entries[entry->index].reset();
  }
}

c10::DeviceIndex checked_device_index(int64_t index) {
  // torch.device keeps indices in 8 bits: "mycelya:999" arrives as -25.
  TORCH_CHECK_VALUE(index >= 0 && index < kMaxDevices, "mycelya device index ", index,
                    " does not exist: mycelya devices are numbered 0 to ",
                    static_cast<int>(kMaxDevices) - 1,
                    " (torch.device stores indices in 8 bits, so a larger one wraps around).");
  return static_cast<c10::DeviceIndex>(index);
}

DeviceRef lookup_device(c10::DeviceIndex index) {
  Table& t = table();
  {
    std::lock_guard<std::mutex> lock(t.mu);
    if (index >= 0 && index < kMaxDevices && t.entries[index]) return t.entries[index];
  }
  TORCH_CHECK_VALUE(false, "mycelya:", static_cast<int>(index),
                    " is not a device of any running RemoteMachine; use machine.device() of a "
                    "running machine to get one.");
}

void check_running(const DeviceEntry& entry) {
  TORCH_CHECK(!entry.stopped.load(std::memory_order_relaxed), "Machine ", entry.machine->id(),
              " is not running: it stopped (or restarted) since this tensor was made on its ",
              entry.remote_name, " (mycelya:", static_cast<int>(entry.index),
              "), and the tensors it held went with it. Start a machine and make the tensors "
              "anew.");
}

int device_count() {
  Table& t = table();
  std::lock_guard<std::mutex> lock(t.mu);
  int count = 0;
  for (c10::DeviceIndex i = 0; i < kMaxDevices; ++i) {
    if (t.entries[i]) count = i + 1;
  }
  return count;
}

std::vector<DeviceRef> running_devices() {
  Table& t = table();
  std::lock_guard<std::mutex> lock(t.mu);
  std::vector<DeviceRef> running;
  for (const DeviceRef& entry : t.entries) {
    if (entry) running.push_back(entry);
  }
  return running;
}

}  // namespace mycelya
