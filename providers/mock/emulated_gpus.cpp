// SPDX-License-Identifier: AGPL-3.0-or-later
#include "providers/mock/emulated_gpus.h"

#include <cstdint>
#include <stdexcept>

namespace mycelya {
namespace {

constexpr uint64_t kMiB = uint64_t{1} << 20;

struct GpuSpec {
  const char* type;  // as RemoteMachine takes it
  const char* name;  // as the driver names it
  uint64_t memory_mib;
  int major;
  int minor;
  int multiprocessors;
};

// Each type's common form (SXM where there are several), from NVIDIA's
// product specifications; memory as nvidia-smi reports it.
constexpr GpuSpec kGpus[] = {
    {"T4", "Tesla T4", 15360, 7, 5, 40},
    {"L4", "NVIDIA L4", 23034, 8, 9, 58},
    {"A10G", "NVIDIA A10G", 23028, 8, 6, 80},
    {"A100-40GB", "NVIDIA A100-SXM4-40GB", 40960, 8, 0, 108},
    {"A100-80GB", "NVIDIA A100-SXM4-80GB", 81920, 8, 0, 108},
    {"L40S", "NVIDIA L40S", 46068, 8, 9, 142},
    {"H100", "NVIDIA H100 80GB HBM3", 81559, 9, 0, 132},
    {"H200", "NVIDIA H200", 143771, 9, 0, 132},
    {"B200", "NVIDIA B200", 183359, 10, 0, 148},
};

}  // namespace

wire::DeviceProperties emulated_gpu_properties(const std::string& gpu_type) {
  for (const GpuSpec& gpu : kGpus) {
    if (gpu_type != gpu.type) continue;
    wire::DeviceProperties properties;
    properties.set_name(gpu.name);
    properties.set_total_memory(gpu.memory_mib * kMiB);
    properties.set_major(gpu.major);
    properties.set_minor(gpu.minor);
    properties.set_multi_processor_count(gpu.multiprocessors);
    properties.set_bf16_supported(gpu.major >= 8);
    properties.set_fp16_supported(true);
    return properties;
  }
  throw std::invalid_argument("mock has no description of GPU type '" + gpu_type + "'");
}

}  // namespace mycelya
