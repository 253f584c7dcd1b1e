// SPDX-License-Identifier: AGPL-3.0-or-later
//
// Which kernel scaled_dot_product_attention uses on a mycelya device.
//
// torch asks a per-device-type choice function. With none registered for
// PrivateUse1 every device got the math path: about twenty small ops per
// attention, forward and backward, each recorded, sent and run on its own.
// Now a device gets the answer its remote device would give:
//  - the machine's CPU: the answer CPU itself gives, so the server runs the
//    fused CPU kernel local PyTorch would run;
//  - a remote GPU: CUDA's answer for the GPU the machine reported
//    (core/cuda_sdp_rules.h). Flash attention travels as the op pair
//    torch sends for any non-CUDA device, which a GPU server runs with
//    CUDA's flash kernels (server/cuda_flash_attention.h). The
//    memory-efficient and cuDNN kernels are not sent yet: where CUDA would
//    pick one of them, flash runs if CUDA's flash kernel takes the inputs
//    (it computes the same attention), and the math path otherwise.
// With dropout, the math path everywhere: its dropout draws from the device's
// generator, where a fused kernel would draw from the process's.
#include <ATen/ATen.h>
#include <ATen/SDPBackend.h>
#include <ATen/native/transformers/attention.h>
#include <ATen/ops/_fused_sdp_choice_native.h>

#include "core/cuda_sdp_rules.h"
#include "core/registration.h"
#include "core/remote_tensor.h"

namespace mycelya {
namespace {

// CUDA's choice, as far as this client can send it.
at::SDPBackend remote_gpu_choice(const sdp::sdp_params& params, const DeviceEntry& device) {
  const CudaDevice gpu{device.properties.major(), device.properties.minor(),
                       device.properties.cudnn_version()};
  if (gpu.major == 0) return at::SDPBackend::math;  // a machine that did not say
  const at::SDPBackend choice = cuda_sdp_backend(params, gpu);
  if (choice == at::SDPBackend::efficient_attention || choice == at::SDPBackend::cudnn_attention) {
    return cuda_flash_fits(params, gpu) ? at::SDPBackend::flash_attention : at::SDPBackend::math;
  }
  return choice;
}

}  // namespace

int64_t fused_sdp_choice(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                         const std::optional<at::Tensor>& attn_mask, double dropout_p,
                         bool is_causal, std::optional<double> scale, bool enable_gqa) {
  if (dropout_p != 0.0) return static_cast<int64_t>(at::SDPBackend::math);
  const DeviceRef device = device_entry(query);
  if (is_remote_cpu(*device)) {
    return at::native::_fused_sdp_choice_cpp(query, key, value, attn_mask, dropout_p, is_causal,
                                             scale, enable_gqa);
  }
  const sdp::sdp_params params{query, key, value, attn_mask, dropout_p, is_causal, enable_gqa};
  return static_cast<int64_t>(remote_gpu_choice(params, *device));
}

}  // namespace mycelya
