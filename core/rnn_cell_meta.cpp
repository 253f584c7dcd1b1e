// SPDX-License-Identifier: AGPL-3.0-or-later
//
// Meta kernels for the fused GRU cell and its backward. PyTorch's GRU calls
// them for every device but the CPU; torch registers meta kernels for the
// LSTM cell's pair but not these, and an op without one would cost mycelya a
// round trip per time step to learn its output shapes (core/fallback.cpp).
// The shapes are those of CUDA's kernels (aten/src/ATen/native/cuda/RNN.cu).
#include <ATen/ATen.h>

#include <tuple>

#include "core/registration.h"

namespace mycelya {
namespace {

// _thnn_fused_gru_cell(input_gates, hidden_gates, hx, input_bias?, hidden_bias?)
//   -> (hy [batch, hidden], workspace [batch, 5 * hidden])
std::tuple<at::Tensor, at::Tensor> gru_cell_meta(const at::Tensor& input_gates,
                                                 const at::Tensor& hidden_gates,
                                                 const at::Tensor& hx,
                                                 const std::optional<at::Tensor>& input_bias,
                                                 const std::optional<at::Tensor>& hidden_bias) {
  TORCH_CHECK(input_gates.dim() == 2 && hx.dim() == 2 &&
                  hidden_gates.sizes() == input_gates.sizes() &&
                  input_gates.size(0) == hx.size(0) && input_gates.size(1) == 3 * hx.size(1),
              "_thnn_fused_gru_cell: gates ", input_gates.sizes(), " and ", hidden_gates.sizes(),
              " do not fit the hidden state ", hx.sizes());
  TORCH_CHECK(input_bias.has_value() == hidden_bias.has_value(),
              "_thnn_fused_gru_cell takes both biases or neither");
  return {at::empty(hx.sizes(), input_gates.options()),
          at::empty({hx.size(0), 5 * hx.size(1)}, input_gates.options())};
}

// _thnn_fused_gru_cell_backward(grad_hy, workspace, has_bias)
//   -> (grad_input_gates, grad_hidden_gates [batch, 3 * hidden], grad_hx,
//       grad_input_bias?, grad_hidden_bias? [3 * hidden])
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_cell_backward_meta(
    const at::Tensor& grad_hy, const at::Tensor& workspace, bool has_bias) {
  TORCH_CHECK(grad_hy.dim() == 2 && workspace.dim() == 2 && workspace.size(0) == grad_hy.size(0) &&
                  workspace.size(1) == 5 * grad_hy.size(1),
              "_thnn_fused_gru_cell_backward: workspace ", workspace.sizes(),
              " does not fit the gradient ", grad_hy.sizes());
  const at::TensorOptions options = workspace.options();
  const int64_t batch = grad_hy.size(0), gates = 3 * grad_hy.size(1);
  at::Tensor bias = has_bias ? at::empty({gates}, options) : at::Tensor();
  return {at::empty({batch, gates}, options), at::empty({batch, gates}, options),
          at::empty(grad_hy.sizes(), options), bias, has_bias ? at::empty({gates}, options) : bias};
}

}  // namespace

void register_rnn_cell_meta_kernels(torch::Library& m) {
  auto& dispatcher = c10::Dispatcher::singleton();
  const auto lacks_meta = [&](const char* name) {
    const auto op = dispatcher.findOp({name, ""});
    return op && !op->hasKernelForDispatchKey(c10::DispatchKey::Meta);
  };
  if (lacks_meta("aten::_thnn_fused_gru_cell")) {
    m.impl("_thnn_fused_gru_cell", TORCH_FN(gru_cell_meta));
  }
  if (lacks_meta("aten::_thnn_fused_gru_cell_backward")) {
    m.impl("_thnn_fused_gru_cell_backward", TORCH_FN(gru_cell_backward_meta));
  }
}

}  // namespace mycelya
