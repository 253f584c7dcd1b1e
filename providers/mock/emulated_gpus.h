// SPDX-License-Identifier: AGPL-3.0-or-later
//
// What mock's emulated cuda devices say of themselves: the properties of the
// GPU type asked for, as torch.cuda reports them on that GPU, so that code
// which branches on a GPU's name, memory or capability takes its GPU branch.
#pragma once

#include <string>

#include "proto/mycelya.pb.h"

namespace mycelya {

// The properties of one GPU of `gpu_type` (core/gpu_types.h lists the types).
// Throws std::invalid_argument for a type without an entry.
wire::DeviceProperties emulated_gpu_properties(const std::string& gpu_type);

}  // namespace mycelya
