// SPDX-License-Identifier: AGPL-3.0-or-later
//
// CUDA's attention-kernel choice as the client predicts it for a remote GPU
// (core/cuda_sdp_rules.h), on CPU tensors that stand in for the GPU's.
#include "core/cuda_sdp_rules.h"

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <gtest/gtest.h>

#include <optional>

#include "tests/cc/gtest_helpers.h"

namespace mycelya {
namespace {

constexpr CudaDevice kA100{8, 0, 0};
constexpr CudaDevice kA10G{8, 6, 0};
constexpr CudaDevice kT4{7, 5, 0};
constexpr CudaDevice kH100NewCudnn{9, 0, 92000};
constexpr CudaDevice kH100OldCudnn{9, 0, 91000};

struct Inputs {
  at::Tensor query, key, value;
  std::optional<at::Tensor> mask;
  bool is_causal = false;

  sdp::sdp_params params() const { return {query, key, value, mask, 0.0, is_causal, false}; }
};

Inputs inputs(at::ScalarType dtype, int64_t head_dim = 64, int64_t q_len = 16,
              int64_t kv_len = 16) {
  const auto options = at::TensorOptions().dtype(dtype);
  return {at::randn({2, 4, q_len, head_dim}, options), at::randn({2, 4, kv_len, head_dim}, options),
          at::randn({2, 4, kv_len, head_dim}, options)};
}

// Restores torch's global attention flags after each test.
class CudaSdpRulesTest : public ::testing::Test {
 protected:
  void TearDown() override {
    auto& context = at::globalContext();
    context.setSDPUseFlash(true);
    context.setSDPUseMemEfficient(true);
    context.setSDPUseMath(true);
    context.setSDPUseCuDNN(true);
    context.setSDPUseOverrideable(true);
    context.setSDPPriorityOrder({1, 2, 0, 3, 4});
  }
};

TEST_F(CudaSdpRulesTest, HalfInputsGetFlashOnAmpereAndLater) {
  for (const at::ScalarType dtype : {at::kHalf, at::kBFloat16}) {
    EXPECT_EQ(cuda_sdp_backend(inputs(dtype).params(), kA100), at::SDPBackend::flash_attention);
    EXPECT_EQ(cuda_sdp_backend(inputs(dtype).params(), kH100OldCudnn),
              at::SDPBackend::flash_attention);
  }
}

TEST_F(CudaSdpRulesTest, WhatFlashCannotTakeGoesToMemEfficient) {
  EXPECT_EQ(cuda_sdp_backend(inputs(at::kFloat).params(), kA100),
            at::SDPBackend::efficient_attention);
  Inputs masked = inputs(at::kHalf);
  masked.mask = at::zeros({16, 16}, at::kHalf);
  EXPECT_EQ(cuda_sdp_backend(masked.params(), kA100), at::SDPBackend::efficient_attention);
  Inputs causal = inputs(at::kHalf, 64, 8, 16);
  causal.is_causal = true;
  EXPECT_EQ(cuda_sdp_backend(causal.params(), kA100), at::SDPBackend::efficient_attention);
  // Turing has no flash kernel.
  EXPECT_EQ(cuda_sdp_backend(inputs(at::kHalf).params(), kT4), at::SDPBackend::efficient_attention);
  EXPECT_FALSE(cuda_flash_fits(inputs(at::kHalf).params(), kT4));
}

TEST_F(CudaSdpRulesTest, TrainingWithLargeHeadsOnSm86SkipsFlash) {
  Inputs large = inputs(at::kHalf, 200);
  EXPECT_EQ(cuda_sdp_backend(large.params(), kA10G), at::SDPBackend::flash_attention);
  large.query.requires_grad_(true);
  EXPECT_EQ(cuda_sdp_backend(large.params(), kA10G), at::SDPBackend::efficient_attention);
  EXPECT_EQ(cuda_sdp_backend(large.params(), kA100), at::SDPBackend::flash_attention);
}

TEST_F(CudaSdpRulesTest, HopperWithARecentCudnnPrefersCudnn) {
  EXPECT_EQ(cuda_sdp_backend(inputs(at::kBFloat16).params(), kH100NewCudnn),
            at::SDPBackend::cudnn_attention);
  // An older cuDNN keeps CUDA's default order.
  EXPECT_EQ(cuda_sdp_backend(inputs(at::kBFloat16).params(), kH100OldCudnn),
            at::SDPBackend::flash_attention);
  // A user's own order (sdpa_kernel(..., set_priority=True)) stays.
  at::globalContext().setSDPPriorityOrder({2, 1, 0, 3, 4});
  EXPECT_EQ(cuda_sdp_backend(inputs(at::kBFloat16).params(), kH100NewCudnn),
            at::SDPBackend::efficient_attention);
  at::globalContext().setSDPPriorityOrder({1, 2, 0, 3, 4});
  at::globalContext().setSDPUseCuDNN(false);
  EXPECT_EQ(cuda_sdp_backend(inputs(at::kBFloat16).params(), kH100NewCudnn),
            at::SDPBackend::flash_attention);
}

TEST_F(CudaSdpRulesTest, EnableFlagsAreHonoured) {
  auto& context = at::globalContext();
  context.setSDPUseFlash(false);
  EXPECT_EQ(cuda_sdp_backend(inputs(at::kHalf).params(), kA100),
            at::SDPBackend::efficient_attention);
  context.setSDPUseMemEfficient(false);
  EXPECT_EQ(cuda_sdp_backend(inputs(at::kHalf).params(), kA100), at::SDPBackend::math);
  // Only flash enabled (sdpa_kernel(FLASH_ATTENTION)) and it cannot run: CUDA's error.
  context.setSDPUseFlash(true);
  context.setSDPUseMath(false);
  context.setSDPUseCuDNN(false);
  context.setSDPUseOverrideable(false);
  EXPECT_TRUE(Contains(
      message_of<c10::Error>([&] { cuda_sdp_backend(inputs(at::kFloat).params(), kA100); }),
      "No available kernel"));
  context.setSDPUseFlash(false);
  EXPECT_TRUE(
      Contains(message_of<c10::Error>([&] { cuda_sdp_backend(inputs(at::kHalf).params(), kA100); }),
               "No viable backend"));
}

}  // namespace
}  // namespace mycelya
