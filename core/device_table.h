// SPDX-License-Identifier: AGPL-3.0-or-later
//
// The device table: torch device "mycelya:k" -> a device of a running machine.
//
// A machine takes an index for each of its devices when it starts (the lowest
// free ones, so indices stay small and dense, as CUDA's are) and gives them
// back when it stops, so a process can start and stop machines without end;
// only the machines running at once are bounded, by kMaxDevices. Each start
// makes new entries: a tensor's storage (and a generator) keeps the entry it
// was made on, so a tensor of a stopped machine keeps failing with "not
// running", even once its index belongs to a newer machine's device.
//
// The count torch sees is the fixed capacity kMaxDevices: the autograd
// engine sizes its per-device worker queues from the device count on first
// use, so a count that changed at run time would break backward.
#pragma once

#include <c10/core/Device.h>

#include <atomic>
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "proto/mycelya.pb.h"

namespace mycelya {

class Machine;

constexpr c10::DeviceIndex kMaxDevices = 32;

struct DeviceEntry {
  DeviceEntry(std::shared_ptr<Machine> machine, int slot, std::string remote_name,
              wire::DeviceProperties properties, c10::DeviceIndex index)
      : machine(std::move(machine)),
        slot(slot),
        remote_name(std::move(remote_name)),
        properties(std::move(properties)),
        index(index) {}

  const std::shared_ptr<Machine> machine;
  const int slot;                 // in machine->devices()
  const std::string remote_name;  // "cuda:0", "cpu"
  // What the machine's Hello said of the device (a GPU's name, capability).
  const wire::DeviceProperties properties;
  const c10::DeviceIndex index;  // k of "mycelya:k"
  // Set once the machine stops: what this entry's tensors held is gone.
  mutable std::atomic<bool> stopped{false};
};

using DeviceRef = std::shared_ptr<const DeviceEntry>;

// Whether the entry's remote device is the machine's CPU ("cpu" or "cpu:k"),
// for client code that follows what CPU's kernels do.
inline bool is_remote_cpu(const DeviceEntry& entry) {
  return entry.remote_name.rfind("cpu", 0) == 0;
}

// Takes an index for each of `devices` (the machine's, by slot, with their
// encoded wire::DeviceProperties). Throws std::runtime_error, taking none,
// when too few indices are free or the properties do not describe the devices.
std::vector<DeviceRef> register_machine(const std::shared_ptr<Machine>& machine,
                                        const std::vector<std::string>& devices,
                                        const std::vector<std::string>& properties);

// Makes the machine's default device (its first cuda device, else its cpu)
// this thread's current device, when the current one names no running
// machine (it was never set, or its machine stopped): as a program's first
// CUDA device is current, torch.mycelya.manual_seed and a bare "mycelya"
// device then mean the first machine started.
void adopt_as_current_if_unset(const std::vector<DeviceRef>& entries);

// Marks the entries stopped and frees their indices.
void release_machine(const std::vector<DeviceRef>& entries);

// `index` as a device index; throws c10::ValueError (Python's ValueError)
// outside 0 .. kMaxDevices - 1.
c10::DeviceIndex checked_device_index(int64_t index);

// The entry "mycelya:index" names now; throws c10::Error when it names no
// device of a running machine.
DeviceRef lookup_device(c10::DeviceIndex index);

// Throws c10::Error ("... is not running") for an entry whose machine
// stopped since it was made.
void check_running(const DeviceEntry& entry);

// The devices of running machines, by index.
std::vector<DeviceRef> running_devices();

// One more than the highest index a running machine's device holds (0 when
// none runs): range(device_count()) covers every device in use.
int device_count();

}  // namespace mycelya
