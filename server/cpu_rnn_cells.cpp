// SPDX-License-Identifier: AGPL-3.0-or-later
#include "server/cpu_rnn_cells.h"

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <optional>
#include <tuple>
#include <vector>

namespace mycelya {
namespace {

// Like CUDA's kernels, compute in the op-math type (float for half and
// bfloat16) and round once at the end.
at::ScalarType compute_type(const at::Tensor& t) { return at::toOpMathType(t.scalar_type()); }

at::Tensor optional_tensor(const c10::IValue& value) {
  return value.isNone() ? at::Tensor() : value.toTensor();
}

// What CUDA's checkSizes asks of a cell's arguments: 2-D gates of
// [batch, factor * hidden], a [batch, hidden] state, and 1-D biases.
void check_cell(const char* op, const at::Tensor& input_gates, const at::Tensor& hidden_gates,
                const at::Tensor& state, const at::Tensor& input_bias,
                const at::Tensor& hidden_bias, int64_t factor) {
  TORCH_CHECK(input_gates.dim() == 2 && state.dim() == 2, op, " expects 2-D gates and state, got ",
              input_gates.sizes(), " and ", state.sizes());
  TORCH_CHECK(hidden_gates.sizes() == input_gates.sizes(), op, ": hidden gates ",
              hidden_gates.sizes(), " differ from input gates ", input_gates.sizes());
  TORCH_CHECK(input_gates.size(0) == state.size(0) && input_gates.size(1) == factor * state.size(1),
              op, ": gates ", input_gates.sizes(), " do not fit the state ", state.sizes());
  TORCH_CHECK(input_bias.defined() == hidden_bias.defined(), op, " takes both biases or neither");
  for (const at::Tensor& bias : {input_bias, hidden_bias}) {
    TORCH_CHECK(!bias.defined() || (bias.dim() == 1 && bias.size(0) == input_gates.size(1)), op,
                ": a bias must have ", input_gates.size(1), " elements, got ", bias.sizes());
  }
  for (const at::Tensor& t : {hidden_gates, state, input_bias, hidden_bias}) {
    TORCH_CHECK(!t.defined() || t.scalar_type() == input_gates.scalar_type(), op,
                " expects one dtype for all its arguments");
  }
}

// A forward cell's arguments (input_gates, hidden_gates, state, input_bias?,
// hidden_bias?), read from the stack and checked as check_cell does.
struct CellArguments {
  at::Tensor input_gates, hidden_gates, state, input_bias, hidden_bias;
};
CellArguments cell_arguments(const char* op, const torch::jit::Stack& stack, int64_t factor) {
  TORCH_CHECK(stack.size() == 5, "malformed ", op, " call");
  CellArguments a{stack[0].toTensor(), stack[1].toTensor(), stack[2].toTensor(),
                  optional_tensor(stack[3]), optional_tensor(stack[4])};
  check_cell(op, a.input_gates, a.hidden_gates, a.state, a.input_bias, a.hidden_bias, factor);
  return a;
}

void push(torch::jit::Stack* stack, std::initializer_list<at::Tensor> results) {
  stack->clear();
  for (const at::Tensor& t : results) stack->emplace_back(t);
}

// _thnn_fused_lstm_cell(input_gates, hidden_gates, cx, input_bias?, hidden_bias?)
//   -> (hy, cy, workspace): workspace holds the four activated gates.
void lstm_cell(torch::jit::Stack* stack) {
  const auto [input_gates, hidden_gates, cx, input_bias, hidden_bias] =
      cell_arguments("_thnn_fused_lstm_cell", *stack, 4);
  const at::ScalarType type = compute_type(input_gates), out = input_gates.scalar_type();
  at::Tensor gates = input_gates.to(type) + hidden_gates.to(type);
  if (input_bias.defined()) gates = gates + input_bias.to(type) + hidden_bias.to(type);
  const std::vector<at::Tensor> chunks = gates.chunk(4, 1);
  const at::Tensor ig = chunks[0].sigmoid(), fg = chunks[1].sigmoid(), cg = chunks[2].tanh(),
                   og = chunks[3].sigmoid();
  const at::Tensor cy = fg * cx.to(type) + ig * cg;
  const at::Tensor hy = og * cy.tanh();
  push(stack,
       {hy.to(out).contiguous(), cy.to(out).contiguous(), at::cat({ig, fg, cg, og}, 1).to(out)});
}

// _thnn_fused_lstm_cell_backward_impl(grad_hy?, grad_cy?, cx, cy, workspace, has_bias)
//   -> (grad_gates, grad_cx, grad_bias?)
void lstm_cell_backward(torch::jit::Stack* stack) {
  TORCH_CHECK(stack->size() == 6, "malformed _thnn_fused_lstm_cell_backward_impl call");
  const at::Tensor grad_hy = optional_tensor((*stack)[0]);
  const at::Tensor grad_cy = optional_tensor((*stack)[1]);
  const at::Tensor cx = (*stack)[2].toTensor(), cy = (*stack)[3].toTensor(),
                   workspace = (*stack)[4].toTensor();
  const bool has_bias = (*stack)[5].toBool();
  if (!grad_hy.defined() && !grad_cy.defined()) {
    push(stack, {at::Tensor(), at::Tensor(), at::Tensor()});
    return;
  }
  const char* op = "_thnn_fused_lstm_cell_backward_impl";
  TORCH_CHECK(cx.dim() == 2 && cy.sizes() == cx.sizes(), op, ": cx ", cx.sizes(), " and cy ",
              cy.sizes(), " must be one [batch, hidden] shape");
  for (const at::Tensor& grad : {grad_hy, grad_cy}) {
    TORCH_CHECK(!grad.defined() || grad.sizes() == cx.sizes(), op, ": a gradient of ", grad.sizes(),
                " does not fit the state ", cx.sizes());
  }
  TORCH_CHECK(workspace.dim() == 2 && workspace.size(0) == cx.size(0) &&
                  workspace.size(1) == 4 * cx.size(1),
              op, ": workspace ", workspace.sizes(), " does not fit the state ", cx.sizes());
  const at::ScalarType type = compute_type(workspace), out = workspace.scalar_type();
  const std::vector<at::Tensor> gates = workspace.to(type).chunk(4, 1);
  const at::Tensor &ig = gates[0], &fg = gates[1], &cg = gates[2], &og = gates[3];
  const at::Tensor go = grad_hy.defined() ? grad_hy.to(type) : at::zeros_like(og);
  const at::Tensor tanh_cy = cy.to(type).tanh();
  // The gradient reaching the cell state: through hy, and from cy's own.
  at::Tensor grad_c = go * og * (1 - tanh_cy * tanh_cy);
  if (grad_cy.defined()) grad_c = grad_c + grad_cy.to(type);
  const at::Tensor grad_gates =
      at::cat({grad_c * cg * (1 - ig) * ig, grad_c * cx.to(type) * (1 - fg) * fg,
               grad_c * ig * (1 - cg * cg), go * tanh_cy * (1 - og) * og},
              1)
          .to(out);
  push(stack, {grad_gates, (grad_c * fg).to(out).contiguous(),
               has_bias ? grad_gates.sum(0) : at::Tensor()});
}

// _thnn_fused_gru_cell(input_gates, hidden_gates, hx, input_bias?, hidden_bias?)
//   -> (hy, workspace): workspace holds r, z, n, hx and the hidden part of n.
void gru_cell(torch::jit::Stack* stack) {
  const auto [input_gates, hidden_gates, hx, input_bias, hidden_bias] =
      cell_arguments("_thnn_fused_gru_cell", *stack, 3);
  const at::ScalarType type = compute_type(input_gates), out = input_gates.scalar_type();
  at::Tensor input = input_gates.to(type), hidden = hidden_gates.to(type);
  if (input_bias.defined()) {
    input = input + input_bias.to(type);
    hidden = hidden + hidden_bias.to(type);
  }
  const std::vector<at::Tensor> i = input.chunk(3, 1), h = hidden.chunk(3, 1);
  const at::Tensor hx_c = hx.to(type);
  const at::Tensor rg = (i[0] + h[0]).sigmoid(), zg = (i[1] + h[1]).sigmoid();
  const at::Tensor ng = (i[2] + rg * h[2]).tanh();
  const at::Tensor hy = ng + zg * (hx_c - ng);
  push(stack, {hy.to(out).contiguous(), at::cat({rg, zg, ng, hx_c, h[2]}, 1).to(out)});
}

// _thnn_fused_gru_cell_backward(grad_hy, workspace, has_bias)
//   -> (grad_input_gates, grad_hidden_gates, grad_hx, grad_input_bias?, grad_hidden_bias?)
void gru_cell_backward(torch::jit::Stack* stack) {
  TORCH_CHECK(stack->size() == 3, "malformed _thnn_fused_gru_cell_backward call");
  const at::Tensor grad_hy = (*stack)[0].toTensor(), workspace = (*stack)[1].toTensor();
  const bool has_bias = (*stack)[2].toBool();
  const char* op = "_thnn_fused_gru_cell_backward";
  TORCH_CHECK(grad_hy.dim() == 2 && workspace.dim() == 2 && workspace.size(0) == grad_hy.size(0) &&
                  workspace.size(1) == 5 * grad_hy.size(1),
              op, ": workspace ", workspace.sizes(), " does not fit the gradient ",
              grad_hy.sizes());
  const at::ScalarType type = compute_type(workspace), out = workspace.scalar_type();
  const std::vector<at::Tensor> w = workspace.to(type).chunk(5, 1);
  const at::Tensor &rg = w[0], &zg = w[1], &ng = w[2], &hx = w[3], &hn = w[4];
  const at::Tensor go = grad_hy.to(type);
  const at::Tensor grad_z = go * (hx - ng) * (1 - zg) * zg;
  const at::Tensor grad_n = go * (1 - zg) * (1 - ng * ng);
  const at::Tensor grad_r = grad_n * hn * (1 - rg) * rg;
  const at::Tensor grad_input_gates = at::cat({grad_r, grad_z, grad_n}, 1).to(out);
  const at::Tensor grad_hidden_gates = at::cat({grad_r, grad_z, grad_n * rg}, 1).to(out);
  push(stack, {grad_input_gates, grad_hidden_gates, (go * zg).to(out).contiguous(),
               has_bias ? grad_input_gates.sum(0) : at::Tensor(),
               has_bias ? grad_hidden_gates.sum(0) : at::Tensor()});
}

}  // namespace

StandIn cpu_stand_in(const std::string& op_name) {
  if (op_name == "aten::_thnn_fused_lstm_cell") return &lstm_cell;
  if (op_name == "aten::_thnn_fused_lstm_cell_backward_impl") return &lstm_cell_backward;
  if (op_name == "aten::_thnn_fused_gru_cell") return &gru_cell;
  if (op_name == "aten::_thnn_fused_gru_cell_backward") return &gru_cell_backward;
  return nullptr;
}

}  // namespace mycelya
