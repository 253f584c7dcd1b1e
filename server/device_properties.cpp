// SPDX-License-Identifier: AGPL-3.0-or-later
#include "server/device_properties.h"

#include <ATen/Parallel.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <dlfcn.h>

#include <fstream>
#include <stdexcept>
#include <string>

namespace mycelya {
namespace {

// The CUDA driver API's few calls used here, looked up at run time: the server
// links no CUDA library itself (a CUDA build of torch loads the driver), and
// a CPU-only server never gets here. Signatures and attribute numbers are the
// driver API's (cuda.h), stable across CUDA releases.
struct CudaDriver {
  using Init = int (*)(unsigned int);
  using DeviceGet = int (*)(int*, int);
  using GetName = int (*)(char*, int, int);
  using TotalMem = int (*)(size_t*, int);
  using GetAttribute = int (*)(int*, int, int);
  static constexpr int kMultiprocessorCount = 16;
  static constexpr int kComputeCapabilityMajor = 75;
  static constexpr int kComputeCapabilityMinor = 76;

  Init init = nullptr;
  DeviceGet device_get = nullptr;
  GetName get_name = nullptr;
  TotalMem total_mem = nullptr;
  GetAttribute get_attribute = nullptr;

  static const CudaDriver& get() {
    static const CudaDriver driver = load();
    return driver;
  }

 private:
  static CudaDriver load() {
    CudaDriver driver;
    void* library = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!library) return driver;
    driver.init = reinterpret_cast<Init>(dlsym(library, "cuInit"));
    driver.device_get = reinterpret_cast<DeviceGet>(dlsym(library, "cuDeviceGet"));
    driver.get_name = reinterpret_cast<GetName>(dlsym(library, "cuDeviceGetName"));
    driver.total_mem = reinterpret_cast<TotalMem>(dlsym(library, "cuDeviceTotalMem_v2"));
    driver.get_attribute = reinterpret_cast<GetAttribute>(dlsym(library, "cuDeviceGetAttribute"));
    return driver;
  }
};

void check_driver(int status, const char* call) {
  if (status != 0) {
    throw std::runtime_error(std::string("the CUDA driver's ") + call + " failed with status " +
                             std::to_string(status));
  }
}

// The processor's model as /proc/cpuinfo names it ("cpu" when it does not).
std::string processor_name() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("model name", 0) != 0) continue;
    const size_t colon = line.find(':');
    if (colon == std::string::npos) break;
    const size_t start = line.find_first_not_of(" \t", colon + 1);
    if (start != std::string::npos) return line.substr(start);
  }
  return "cpu";
}

}  // namespace

wire::DeviceProperties cuda_device_properties(c10::DeviceIndex index) {
  const CudaDriver& driver = CudaDriver::get();
  if (!driver.init || !driver.device_get || !driver.get_name || !driver.total_mem ||
      !driver.get_attribute) {
    throw std::runtime_error("cannot load the CUDA driver (libcuda.so.1) to describe cuda:" +
                             std::to_string(index));
  }
  check_driver(driver.init(0), "cuInit");
  int device = 0;
  check_driver(driver.device_get(&device, index), "cuDeviceGet");
  char name[256] = {};
  check_driver(driver.get_name(name, sizeof(name) - 1, device), "cuDeviceGetName");
  size_t total = 0;
  check_driver(driver.total_mem(&total, device), "cuDeviceTotalMem");
  int major = 0;
  int minor = 0;
  int multiprocessors = 0;
  check_driver(driver.get_attribute(&major, CudaDriver::kComputeCapabilityMajor, device),
               "cuDeviceGetAttribute");
  check_driver(driver.get_attribute(&minor, CudaDriver::kComputeCapabilityMinor, device),
               "cuDeviceGetAttribute");
  check_driver(driver.get_attribute(&multiprocessors, CudaDriver::kMultiprocessorCount, device),
               "cuDeviceGetAttribute");
  wire::DeviceProperties properties;
  properties.set_name(name);
  properties.set_total_memory(total);
  properties.set_major(major);
  properties.set_minor(minor);
  properties.set_multi_processor_count(multiprocessors);
  // torch.cuda.is_bf16_supported(including_emulation=False): Ampere and later.
  properties.set_bf16_supported(major >= 8);
  properties.set_fp16_supported(major > 5 || (major == 5 && minor >= 3));
  try {
    properties.set_cudnn_version(at::detail::getCUDAHooks().versionRuntimeCuDNN());
  } catch (const c10::Error&) {
    // A torch built without cuDNN: none.
  }
  return properties;
}

wire::DeviceProperties cpu_device_properties(uint64_t memory_limit) {
  static const std::string name = processor_name();
  wire::DeviceProperties properties;
  properties.set_name(name);
  properties.set_total_memory(memory_limit);
  properties.set_multi_processor_count(at::get_num_threads());
  // torch's CPU kernels take both (emulated where the processor lacks them).
  properties.set_bf16_supported(true);
  properties.set_fp16_supported(true);
  return properties;
}

wire::DeviceProperties device_properties(c10::Device device, uint64_t memory_limit) {
  if (device.is_cuda()) return cuda_device_properties(device.index());
  return cpu_device_properties(memory_limit);
}

}  // namespace mycelya
