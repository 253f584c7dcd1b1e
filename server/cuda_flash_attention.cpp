// SPDX-License-Identifier: AGPL-3.0-or-later
#include "server/cuda_flash_attention.h"

#include <ATen/ATen.h>
#include <ATen/ops/_scaled_dot_product_flash_attention.h>
#include <ATen/ops/_scaled_dot_product_flash_attention_backward.h>

#include <cmath>

namespace mycelya {
namespace {

constexpr int64_t kFlashHeadDimMultiple = 8;

// Zeros appended to the last dimension up to a multiple of 8, as CUDA's
// composite pads for its flash kernel (zero columns add nothing to q·k and
// give zero output columns).
at::Tensor padded(const at::Tensor& tensor) {
  const int64_t size = tensor.size(-1);
  const int64_t extra =
      (kFlashHeadDimMultiple - size % kFlashHeadDimMultiple) % kFlashHeadDimMultiple;
  return extra == 0 ? tensor : at::constant_pad_nd(tensor, {0, extra}, 0);
}

at::Tensor unpadded(const at::Tensor& tensor, int64_t size) {
  return tensor.size(-1) == size ? tensor : tensor.narrow(-1, 0, size);
}

void check_flash_arguments(const at::Tensor& query, double dropout_p,
                           const std::optional<at::Tensor>& attn_mask) {
  TORCH_CHECK(query.dim() == 4, "flash attention on a GPU takes 4-D query, key and value, got ",
              query.dim(), "-D");
  TORCH_CHECK(!attn_mask || !attn_mask->defined(),
              "flash attention on a GPU takes no attention mask");
  TORCH_CHECK(dropout_p == 0.0, "flash attention on a GPU is sent only without dropout");
}

double scale_for(const at::Tensor& query, std::optional<double> scale) {
  return scale ? *scale : 1.0 / std::sqrt(static_cast<double>(query.size(-1)));
}

// (query, key, value, dropout_p, is_causal, attn_mask, scale) -> (output, logsumexp)
void flash_forward(torch::jit::Stack* stack) {
  const at::Tensor query = (*stack)[0].toTensor();
  const at::Tensor key = (*stack)[1].toTensor();
  const at::Tensor value = (*stack)[2].toTensor();
  const double dropout_p = (*stack)[3].toDouble();
  const bool is_causal = (*stack)[4].toBool();
  const auto attn_mask = (*stack)[5].toOptional<at::Tensor>();
  const auto scale = (*stack)[6].toOptional<double>();
  check_flash_arguments(query, dropout_p, attn_mask);
  const auto results = at::_scaled_dot_product_flash_attention(
      padded(query), padded(key), padded(value), 0.0, is_causal, false, scale_for(query, scale));
  // The CPU op's layouts, which the client planned: output like the query,
  // logsumexp (B, H, L) stored as (B, L, H).
  at::Tensor output = at::empty_like(query);
  output.copy_(unpadded(std::get<0>(results), value.size(-1)));
  const at::Tensor& cuda_logsumexp = std::get<1>(results);
  at::Tensor logsumexp =
      at::empty({query.size(0), query.size(2), query.size(1)}, cuda_logsumexp.options())
          .transpose(1, 2);
  logsumexp.copy_(cuda_logsumexp);
  torch::jit::drop(*stack, 7);
  torch::jit::push(*stack, std::move(output), std::move(logsumexp));
}

// The (B, H, L, D) gradient laid out as (B, L, H, D), as the CPU backward's.
at::Tensor as_cpu_gradient(const at::Tensor& gradient, int64_t size) {
  at::Tensor laid_out =
      at::empty({gradient.size(0), gradient.size(2), gradient.size(1), size}, gradient.options())
          .transpose(1, 2);
  laid_out.copy_(unpadded(gradient, size));
  return laid_out;
}

// (grad_out, query, key, value, out, logsumexp, dropout_p, is_causal,
//  attn_mask, scale) -> (grad_query, grad_key, grad_value)
void flash_backward(torch::jit::Stack* stack) {
  const at::Tensor grad_out = (*stack)[0].toTensor();
  const at::Tensor query = (*stack)[1].toTensor();
  const at::Tensor key = (*stack)[2].toTensor();
  const at::Tensor value = (*stack)[3].toTensor();
  const at::Tensor out = (*stack)[4].toTensor();
  const at::Tensor logsumexp = (*stack)[5].toTensor();
  const double dropout_p = (*stack)[6].toDouble();
  const bool is_causal = (*stack)[7].toBool();
  const auto attn_mask = (*stack)[8].toOptional<at::Tensor>();
  const auto scale = (*stack)[9].toOptional<double>();
  check_flash_arguments(query, dropout_p, attn_mask);
  // Without dropout the kernel reads no random state.
  const at::Tensor no_seed = at::empty({2}, query.options().dtype(at::kUInt64));
  const at::Tensor no_offset = at::empty({}, query.options().dtype(at::kUInt64));
  const auto grads = at::_scaled_dot_product_flash_attention_backward(
      padded(grad_out), padded(query), padded(key), padded(value), padded(out),
      logsumexp.contiguous(), at::Tensor(), at::Tensor(), query.size(2), key.size(2), 0.0,
      is_causal, no_seed, no_offset, scale_for(query, scale));
  torch::jit::drop(*stack, 10);
  torch::jit::push(*stack, as_cpu_gradient(std::get<0>(grads), query.size(-1)),
                   as_cpu_gradient(std::get<1>(grads), key.size(-1)),
                   as_cpu_gradient(std::get<2>(grads), value.size(-1)));
}

}  // namespace

StandIn cuda_stand_in(const std::string& op_name) {
  if (op_name == "aten::_scaled_dot_product_flash_attention_for_cpu") return &flash_forward;
  if (op_name == "aten::_scaled_dot_product_flash_attention_for_cpu_backward") {
    return &flash_backward;
  }
  return nullptr;
}

}  // namespace mycelya
