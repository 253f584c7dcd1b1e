// SPDX-License-Identifier: AGPL-3.0-or-later
//
// What each file of the backend hands core/registration.cpp, the one place
// that registers them with torch. The files implement; registration.cpp says
// what torch sees and in which order.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/library.h>

#include <optional>

namespace mycelya {

// core/hooks.cpp: names the backend "mycelya" and installs its PrivateUse1 hooks.
void register_backend_hooks();

// core/guard.cpp: the device guard, the one holder of the current device.
c10::impl::DeviceGuardImplInterface* new_guard_impl();

// core/tensor_kernels.cpp: allocation and view kernels, answered locally.
void register_tensor_kernels(torch::Library& m);

// core/copy_kernels.cpp: copies to, from and within a machine, and .item().
void register_copy_kernels(torch::Library& m);
// The same copy, for the Conjugate and Negative keys: resolves the lazy bit first.
void register_lazy_bit_copies(torch::Library& m);

// core/fallback.cpp: the boxed fallback that records every other op.
void remote_fallback(const c10::OperatorHandle& op, torch::jit::Stack* stack);
// Whether an ATen op with kernels that would win over the fallback should be
// sent to the fallback instead (the reasons are at its definition).
bool routes_to_fallback(const c10::OperatorName& name);

// core/autocast_kernels.cpp: autocast's casts, by the policy of the remote device's type.
void register_autocast_kernels(torch::Library& m);

// core/rnn_cell_meta.cpp: meta kernels for the fused GRU cell, where torch has none.
void register_rnn_cell_meta_kernels(torch::Library& m);

// core/attention_kernels.cpp: scaled_dot_product_attention's kernel choice.
int64_t fused_sdp_choice(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                         const std::optional<at::Tensor>& attn_mask, double dropout_p,
                         bool is_causal, std::optional<double> scale, bool enable_gqa);

}  // namespace mycelya
