// SPDX-License-Identifier: AGPL-3.0-or-later
//
// The global device table: torch device "mycelya:k" -> (machine, remote slot).
//
// Indices are handed out once and never reused in a process. The count torch
// sees is a fixed capacity (kMaxDevices): the autograd engine sizes its
// per-device worker queues from the device count on first use, so a count
// that grew at run time would break backward.
#pragma once

#include <c10/core/Device.h>

#include <memory>
#include <string>
#include <vector>

#include "core/machine.h"

namespace mycelya {

constexpr c10::DeviceIndex kMaxDevices = 32;

struct DeviceEntry {
  std::shared_ptr<Machine> machine;
  int slot = -1;            // in machine->devices()
  std::string remote_name;  // "cuda:0", "cpu"
};

// Whether the entry's remote device is the machine's CPU ("cpu" or "cpu:k"),
// for client code that follows what CPU's kernels do.
inline bool is_remote_cpu(const DeviceEntry& entry) {
  return entry.remote_name.rfind("cpu", 0) == 0;
}

// Returns the index for (machine, slot), registering it on first use.
c10::DeviceIndex register_device(const std::shared_ptr<Machine>& machine, int slot);

// The entry for a device index; throws c10::Error for one never registered.
DeviceEntry lookup_device(c10::DeviceIndex index);

// Number of indices handed out so far.
int registered_device_count();

// Every machine that has a registered device, for shutdown.
std::vector<std::shared_ptr<Machine>> all_registered_machines();

}  // namespace mycelya
