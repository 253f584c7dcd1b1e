// SPDX-License-Identifier: AGPL-3.0-or-later
//
// Random generators of mycelya devices. Numbers are drawn on the machine, by
// generators of its session (server/session_generators.h); a RemoteGenerator
// is the local handle of one of them: a device's default generator, or one
// made with torch.Generator(device="mycelya:k").
//
// Every way in reaches the machine through RemoteGenerator:
// torch.manual_seed and torch.mycelya.manual_seed_all (seed_all),
// torch.mycelya.manual_seed, get_rng_state and set_rng_state (the current
// device's default generator), a torch.Generator's manual_seed, get_state
// and set_state, and an op's generator= argument (encode_generator).
// Seeding queues a Seed command for that one generator (no round trip);
// reading a state is a sync point, setting one is queued like an op.
#pragma once

#include <ATen/core/Generator.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "core/device_table.h"
#include "proto/mycelya.pb.h"

namespace mycelya {

// The default generator of "mycelya:device" (-1: the current device).
const at::Generator& default_generator(c10::DeviceIndex device);

// A new generator on "mycelya:device"'s machine (torch.Generator(device=...)),
// starting from PyTorch's default seed.
at::Generator new_generator(c10::DeviceIndex device);

// Points each device's default generator at its freshly started device, at
// PyTorch's default seed, or at the seed of the last seed_all() if there was
// one (as CUDA seeds devices that initialize after torch.manual_seed).
void start_default_generators(const std::vector<DeviceRef>& devices);

// Lets go of the stopped devices (their machine can then be freed); their
// default generators wait for the next machine that takes the index.
void stop_default_generators(const std::vector<DeviceRef>& devices);

// Seeds the default generator of every device of every running machine, and
// of machines started later.
void seed_all(uint64_t seed);

// The generator an op on `device` draws from: `generator`, or the device's
// default when none was given. Throws c10::Error for a generator of another
// device or kind.
void encode_generator(const std::optional<at::Generator>& generator, const DeviceEntry& device,
                      wire::GeneratorRef* out);

}  // namespace mycelya
