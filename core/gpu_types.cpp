// SPDX-License-Identifier: AGPL-3.0-or-later
#include "core/gpu_types.h"

#include <algorithm>
#include <stdexcept>

#include "core/joined_names.h"

namespace mycelya {

const std::vector<std::string>& supported_gpu_types() {
  static const std::vector<std::string> types = {"T4",   "L4",   "A10G", "A100-40GB", "A100-80GB",
                                                 "L40S", "H100", "H200", "B200"};
  return types;
}

void validate_gpu_type(const std::string& gpu_type) {
  const auto& types = supported_gpu_types();
  if (gpu_type.empty() || std::find(types.begin(), types.end(), gpu_type) != types.end()) return;
  throw std::invalid_argument("Unknown GPU type '" + gpu_type +
                              "'. Valid GPU types: " + joined_names(types) + ".");
}

void validate_gpu_count(const std::string& gpu_type, int gpu_count) {
  if (gpu_count < 1) {
    throw std::invalid_argument("gpu_count must be a positive integer, got " +
                                std::to_string(gpu_count) + ".");
  }
  if (gpu_count != 1 && gpu_type.empty()) {
    throw std::invalid_argument("gpu_count=" + std::to_string(gpu_count) +
                                " needs a gpu_type (one of " + joined_names(supported_gpu_types()) +
                                "): a machine without a gpu_type has no GPUs.");
  }
}

}  // namespace mycelya
