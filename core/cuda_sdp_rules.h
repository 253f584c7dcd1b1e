// SPDX-License-Identifier: AGPL-3.0-or-later
//
// Which scaled-dot-product-attention kernel torch 2.13 would pick for these
// inputs on a CUDA GPU of the given compute capability, with the given
// cuDNN (select_sdp_backend in torch's cuda/sdp_utils.cpp, as its rules read
// in 2.13): the user's enable flags and priority order
// (torch.nn.attention.sdpa_kernel) first, then each fused kernel's checks of
// hardware, dtype, head dimension, mask, layout and grad mode. The client
// asks it for a mycelya device on a remote GPU, which it cannot inspect
// itself, using the properties the machine reported.
#pragma once

#include <ATen/SDPBackend.h>
#include <ATen/native/transformers/sdp_utils_cpp.h>

#include <cstdint>

namespace mycelya {

struct CudaDevice {
  int major = 0;
  int minor = 0;
  int64_t cudnn_version = 0;  // 0: no cuDNN
};

// The backend CUDA would run. Raises as CUDA does when every backend is
// disabled or none fits.
at::SDPBackend cuda_sdp_backend(const sdp::sdp_params& params, const CudaDevice& device);

// Whether CUDA's flash kernel takes these inputs on `device`, flags aside.
bool cuda_flash_fits(const sdp::sdp_params& params, const CudaDevice& device);

}  // namespace mycelya
