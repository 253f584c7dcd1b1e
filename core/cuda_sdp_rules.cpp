// SPDX-License-Identifier: AGPL-3.0-or-later
#include "core/cuda_sdp_rules.h"

#include <ATen/Context.h>

#include <array>
#include <cstdlib>
#include <string>
#include <vector>

namespace mycelya {
namespace {

constexpr bool kNoDebug = false;

// Compute capability as one number: 8.6 is 86.
int capability(const CudaDevice& device) { return device.major * 10 + device.minor; }

bool within(const CudaDevice& device, int lowest, int highest) {
  const int cc = capability(device);
  return cc >= lowest && cc <= highest;
}

bool is_half(at::ScalarType dtype) { return dtype == at::kHalf || dtype == at::kBFloat16; }

// The shared dense-input checks, as each backend instantiates them.
template <bool supports_gqa, bool same_kv_heads, bool singleton_last_dim_ok>
bool dense_inputs_fit(const sdp::sdp_params& params) {
  return sdp::check_batch_size_and_num_heads_dense<supports_gqa, same_kv_heads>(params, kNoDebug) &&
         sdp::check_nonzero_sequence_lengths_dense(params, kNoDebug) &&
         sdp::check_last_dim_stride_equals_1_dense<singleton_last_dim_ok>(params, kNoDebug);
}

bool has_mask(const sdp::sdp_params& params) {
  return params.attn_mask.has_value() && params.attn_mask->defined();
}

bool flash_fits(const sdp::sdp_params& params, const CudaDevice& device) {
  if (!sdp::check_tensor_shapes(params, kNoDebug) || has_mask(params)) return false;
  const int64_t head_dim = params.query.size(-1);
  if (params.key.size(-1) != head_dim || params.value.size(-1) != head_dim || head_dim > 256) {
    return false;
  }
  if (!within(device, 80, 121)) return false;
  // Ampere consumer and Blackwell consumer parts lack the shared memory to
  // train with head dims between 192 and 224 (and above 224 with dropout).
  if (sdp::input_requires_grad(params) && (within(device, 86, 89) || within(device, 120, 121)) &&
      head_dim > 192 && !(params.dropout == 0.0 && head_dim > 224)) {
    return false;
  }
  if (params.is_causal && params.query.size(-2) != params.key.size(-2)) return false;
  const std::array<at::ScalarType, 2> dtypes{at::kHalf, at::kBFloat16};
  if (!sdp::check_tensor_dtype(params, dtypes, kNoDebug)) return false;
  return dense_inputs_fit<true, true, true>(params);
}

// The smallest GEMM alignment, in elements, of the memory-efficient kernel.
int64_t mem_efficient_alignment(const CudaDevice& device, at::ScalarType dtype) {
  if (device.major >= 8) return is_half(dtype) ? 8 : 4;
  if (device.major == 7) return dtype == at::kHalf ? 8 : 1;
  return 1;
}

bool mem_efficient_fits(const sdp::sdp_params& params, const CudaDevice& device) {
  if (!within(device, 50, 121) || !sdp::check_tensor_shapes(params, kNoDebug)) return false;
  const at::ScalarType dtype = params.query.scalar_type();
  const int64_t alignment = mem_efficient_alignment(device, dtype);
  const int64_t qk_dim = params.query.size(-1);
  const int64_t v_dim = params.value.size(-1);
  if (params.key.size(-1) != qk_dim || qk_dim <= 0 || v_dim <= 0 || qk_dim % alignment != 0 ||
      v_dim % alignment != 0) {
    return false;
  }
  if (device.major >= 8) {
    for (const at::Tensor* tensor : {&params.query, &params.key, &params.value}) {
      if (tensor->numel() > 0 && tensor->storage_offset() % alignment != 0) return false;
    }
  }
  if (!dense_inputs_fit<false, true, false>(params)) return false;
  if (device.major >= 8) {
    const std::array<at::ScalarType, 3> dtypes{at::kHalf, at::kFloat, at::kBFloat16};
    return sdp::check_tensor_dtype(params, dtypes, kNoDebug);
  }
  const std::array<at::ScalarType, 2> dtypes{at::kHalf, at::kFloat};
  return sdp::check_tensor_dtype(params, dtypes, kNoDebug);
}

bool cudnn_fits(const sdp::sdp_params& params, const CudaDevice& device) {
  const int64_t cudnn = device.cudnn_version;
  if (cudnn < 90000) return false;  // torch needs cuDNN 9 for its attention
  if (params.dropout > 0.0 && cudnn > 91100 && cudnn < 91400) return false;
  if (!sdp::check_tensor_shapes(params, kNoDebug)) return false;
  auto& context = at::globalContext();
  if (context.deterministicAlgorithms() && !context.deterministicAlgorithmsWarnOnly()) {
    return false;
  }
  const std::array<at::ScalarType, 2> dtypes{at::kHalf, at::kBFloat16};
  if (device.major < 8 || !sdp::check_tensor_dtype(params, dtypes, kNoDebug)) return false;
  if (!sdp::check_attn_mask_shape(params, kNoDebug) || !within(device, 80, 121)) return false;
  const double sixteenths = params.dropout * 16.0;
  if (sixteenths != static_cast<double>(static_cast<int64_t>(sixteenths))) return false;
  if (!dense_inputs_fit<true, false, true>(params)) return false;
  const int64_t batch = params.query.size(0);
  const int64_t heads = params.query.size(1);
  if (batch > 65535 || heads > 65535) return false;
  const int64_t qk_dim = params.query.size(-1);
  const int64_t v_dim = params.value.size(-1);
  int64_t limit = 128;
  if (cudnn >= 91000 && capability(device) == 90) limit = 256;
  if (cudnn >= 91100 && device.major == 10 && qk_dim == 192 && v_dim == 128) limit = 192;
  if (qk_dim > limit || v_dim > limit || qk_dim % 8 != 0 || v_dim % 8 != 0) return false;
  if (params.key.size(-2) == 1) return false;
  if (params.dropout > 0.0 && params.query.size(-2) == 1) return false;
  return true;
}

// CUDA moves cuDNN first on Hopper and Blackwell with a recent cuDNN, once,
// unless TORCH_CUDNN_SDPA_DEPRIORITIZED is set; a user's own order stays.
std::array<at::SDPBackend, at::num_sdp_backends> priority_order(const CudaDevice& device) {
  std::array<at::SDPBackend, at::num_sdp_backends> order = at::globalContext().sDPPriorityOrder();
  const std::array<at::SDPBackend, at::num_sdp_backends> default_order{
      at::SDPBackend::flash_attention, at::SDPBackend::efficient_attention, at::SDPBackend::math,
      at::SDPBackend::cudnn_attention, at::SDPBackend::overrideable};
  const char* deprioritized = std::getenv("TORCH_CUDNN_SDPA_DEPRIORITIZED");
  const bool cudnn_deprioritized =
      deprioritized && std::string(deprioritized) != "0" && std::string(deprioritized) != "";
  if (order == default_order && !cudnn_deprioritized && device.cudnn_version > 91500 &&
      (device.major == 9 || device.major == 10)) {
    order = {at::SDPBackend::cudnn_attention, at::SDPBackend::flash_attention,
             at::SDPBackend::efficient_attention, at::SDPBackend::math,
             at::SDPBackend::overrideable};
  }
  return order;
}

}  // namespace

bool cuda_flash_fits(const sdp::sdp_params& params, const CudaDevice& device) {
  return flash_fits(params, device);
}

at::SDPBackend cuda_sdp_backend(const sdp::sdp_params& params, const CudaDevice& device) {
  auto& context = at::globalContext();
  TORCH_CHECK(context.userEnabledMathSDP() || context.userEnabledFlashSDP() ||
                  context.userEnabledMemEfficientSDP() || context.userEnabledCuDNNSDP(),
              "No viable backend for scaled_dot_product_attention was found.");
  for (const at::SDPBackend backend : priority_order(device)) {
    switch (backend) {
      case at::SDPBackend::cudnn_attention:
        if (context.userEnabledCuDNNSDP() && cudnn_fits(params, device)) return backend;
        break;
      case at::SDPBackend::flash_attention:
        if (context.userEnabledFlashSDP() && flash_fits(params, device)) return backend;
        break;
      case at::SDPBackend::efficient_attention:
        if (context.userEnabledMemEfficientSDP() && mem_efficient_fits(params, device)) {
          return backend;
        }
        break;
      case at::SDPBackend::math:
        if (context.userEnabledMathSDP()) return backend;
        break;
      case at::SDPBackend::overrideable:
        TORCH_CHECK(!context.userEnabledOverrideableSDP(), "Invalid backend");
        break;
      default:
        break;
    }
  }
  TORCH_CHECK(false, "No available kernel. Aborting execution.");
}

}  // namespace mycelya
