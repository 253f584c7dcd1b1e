// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <string>
#include <vector>

namespace mycelya {

// The GPU types a RemoteMachine may ask for, in the original project's order.
const std::vector<std::string>& supported_gpu_types();

// Throws std::invalid_argument listing the valid types for an unknown one.
// An empty gpu_type (a CPU-only machine) is valid.
void validate_gpu_type(const std::string& gpu_type);

// Throws std::invalid_argument for a gpu_count below 1, or above 1 without a
// gpu_type (a machine without one has no GPUs). The one owner of these
// rules: the Python package asks it too, through mycelya_torch._C.
void validate_gpu_count(const std::string& gpu_type, int gpu_count);

}  // namespace mycelya
