// SPDX-License-Identifier: AGPL-3.0-or-later
//
// Which kernel scaled_dot_product_attention uses on a mycelya device.
//
// torch asks a per-device-type choice function. With none registered for
// PrivateUse1 every device got the math path: about twenty small ops per
// attention, forward and backward, each recorded, sent and run on its own.
// A device backed by the remote machine's CPU now gets the answer CPU itself
// gives, so the server runs the fused CPU kernel local PyTorch would run.
// Other devices (a remote GPU) keep the math path: their choice depends on the
// GPU, which this process cannot inspect.
#include <ATen/ATen.h>
#include <ATen/SDPBackend.h>
#include <ATen/native/transformers/attention.h>
#include <ATen/ops/_fused_sdp_choice_native.h>

#include "core/registration.h"
#include "core/remote_tensor.h"

namespace mycelya {

int64_t fused_sdp_choice(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                         const std::optional<at::Tensor>& attn_mask, double dropout_p,
                         bool is_causal, std::optional<double> scale, bool enable_gqa) {
  // With dropout, the math path: its dropout draws from the device's
  // generator, where the fused CPU kernel would draw from the process's.
  if (dropout_p == 0.0 && is_remote_cpu(*device_entry(query))) {
    return at::native::_fused_sdp_choice_cpp(query, key, value, attn_mask, dropout_p, is_causal,
                                             scale, enable_gqa);
  }
  return static_cast<int64_t>(at::SDPBackend::math);
}

}  // namespace mycelya
