// SPDX-License-Identifier: AGPL-3.0-or-later
//
// The default generator of each mycelya device. Random numbers are drawn
// remotely, so the local generator only carries the seed: setting it queues a
// Seed command for the device's machine (no round trip).
#pragma once

#include <ATen/core/Generator.h>
#include <c10/core/Device.h>

namespace mycelya {

const at::Generator& default_generator(c10::DeviceIndex device);

}  // namespace mycelya
