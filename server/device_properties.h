// SPDX-License-Identifier: AGPL-3.0-or-later
//
// What a session's Hello says of each device it serves (wire::DeviceProperties):
// the values torch.cuda.get_device_properties gives on a GPU, and honest
// ones for the machine's CPU, so a client can branch on them as a script
// branches on a local GPU's (the attention kernel it picks, bf16 support).
#pragma once

#include <c10/core/Device.h>

#include <cstdint>

#include "proto/mycelya.pb.h"

namespace mycelya {

// A CUDA device of this process, read from the CUDA driver (without making
// a context on it). Throws std::runtime_error when the driver cannot say.
wire::DeviceProperties cuda_device_properties(c10::DeviceIndex index);

// The machine's CPU: its processor's name, `memory_limit` bytes (what a
// session may hold there), capability 0.0, and the threads its ops use.
wire::DeviceProperties cpu_device_properties(uint64_t memory_limit);

// The device's properties as above, by its type.
wire::DeviceProperties device_properties(c10::Device device, uint64_t memory_limit);

}  // namespace mycelya
