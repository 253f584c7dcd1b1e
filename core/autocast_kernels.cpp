// SPDX-License-Identifier: AGPL-3.0-or-later
//
// Autocast on mycelya devices: torch.autocast("mycelya", dtype=...) casts
// each op's arguments on the client by the policy of the device type the
// tensors live on at the machine, so the machine runs ordinary ops. CUDA's
// op lists apply to a remote GPU, CPU's to a remote cpu device.
//
// CUDA's lists come from the macros torch's header shares for this purpose
// (ATen/autocast_mode.h). CPU's are not in a header: which ops CPU autocasts
// is read from the dispatcher (every aten op with an AutocastCPU kernel), and
// the few among them that CPU runs in lower precision or promotes are named
// here, from aten/src/ATen/autocast_mode.cpp; the rest of CPU's run in
// float32. tests/test_autocast.py checks these against CPU's own autocast.
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <string>
#include <unordered_map>
#include <unordered_set>

#include "core/meta_inference.h"
#include "core/registration.h"
#include "core/remote_tensor.h"

namespace mycelya {
namespace {

enum class CastPolicy : uint8_t {
  kLowerPrecision,  // eligible floating arguments to the autocast dtype
  kFloat32,         // eligible floating arguments to float32
  kFloat32Dtype,    // an unset dtype argument becomes float32 (softmax, sum, ...)
  kPromote,         // eligible arguments to their widest floating type
  kBanned,          // refused, as CUDA refuses binary_cross_entropy
};

using PolicyTable = std::unordered_map<std::string, CastPolicy>;

// "conv1d" or "conv1d.padding" from the header's one- or two-argument entries.
#define MYCELYA_OP_NAME_1(op) #op
#define MYCELYA_OP_NAME_2(op, overload) #op "." #overload
#define MYCELYA_OP_NAME_PICK(_1, _2, name, ...) name
#define MYCELYA_OP_NAME(...) \
  MYCELYA_OP_NAME_PICK(__VA_ARGS__, MYCELYA_OP_NAME_2, MYCELYA_OP_NAME_1, )(__VA_ARGS__)

const PolicyTable& cuda_policies() {
  static const PolicyTable table = [] {
    PolicyTable t;
#define MYCELYA_LOWER(...) t.emplace(MYCELYA_OP_NAME(__VA_ARGS__), CastPolicy::kLowerPrecision);
#define MYCELYA_FLOAT32(...) t.emplace(MYCELYA_OP_NAME(__VA_ARGS__), CastPolicy::kFloat32);
#define MYCELYA_FLOAT32_DTYPE(...) \
  t.emplace(MYCELYA_OP_NAME(__VA_ARGS__), CastPolicy::kFloat32Dtype);
#define MYCELYA_PROMOTE(...) t.emplace(MYCELYA_OP_NAME(__VA_ARGS__), CastPolicy::kPromote);
    AT_FORALL_LOWER_PRECISION_FP(MYCELYA_LOWER)
    AT_FORALL_FP32(MYCELYA_FLOAT32)
    AT_FORALL_FP32_SET_OPT_DTYPE(MYCELYA_FLOAT32_DTYPE)
    AT_FORALL_PROMOTE(MYCELYA_PROMOTE)
#undef MYCELYA_LOWER
#undef MYCELYA_FLOAT32
#undef MYCELYA_FLOAT32_DTYPE
#undef MYCELYA_PROMOTE
    // CUDA's own additions to the shared lists. norm's two overloads run
    // in float32 there through their dtype overloads: the same result as
    // float32 arguments.
    t.emplace("cudnn_convolution", CastPolicy::kLowerPrecision);
    t.emplace("cudnn_convolution_transpose", CastPolicy::kLowerPrecision);
    t.emplace("norm.Scalar", CastPolicy::kFloat32);
    t.emplace("norm.ScalarOpt_dim", CastPolicy::kFloat32);
    t.emplace("binary_cross_entropy", CastPolicy::kBanned);
    return t;
  }();
  return table;
}

std::string op_key(const c10::OperatorName& name) {
  const std::string bare = name.name.substr(6);  // without "aten::"
  return name.overload_name.empty() ? bare : bare + "." + name.overload_name;
}

const PolicyTable& cpu_policies() {
  static const PolicyTable table = [] {
    PolicyTable t;
    // Every aten op CPU autocasts runs in float32 there, but these.
    for (const auto& name : c10::Dispatcher::singleton().getAllOpNames()) {
      if (name.name.rfind("aten::", 0) != 0) continue;
      const auto op = c10::Dispatcher::singleton().findOp(name);
      if (!op || !op->hasKernelForDispatchKey(c10::DispatchKey::AutocastCPU)) continue;
      t.emplace(op_key(name), CastPolicy::kFloat32);
    }
    for (const char* lower : {"conv1d",
                              "conv1d.padding",
                              "conv2d",
                              "conv2d.padding",
                              "conv3d",
                              "conv3d.padding",
                              "bmm",
                              "mm",
                              "linalg_vecdot",
                              "baddbmm",
                              "addmm",
                              "_addmm_activation",
                              "addbmm",
                              "linear",
                              "_convolution.deprecated",
                              "matmul",
                              "conv_tbc",
                              "mkldnn_rnn_layer",
                              "conv_transpose1d",
                              "conv_transpose2d.input",
                              "conv_transpose3d.input",
                              "prelu",
                              "scaled_dot_product_attention",
                              "_native_multi_head_attention"}) {
      t[lower] = CastPolicy::kLowerPrecision;
    }
    for (const char* promote : {"stack", "cat", "index_copy", "index_copy.dimname"}) {
      t[promote] = CastPolicy::kPromote;
    }
    return t;
  }();
  return table;
}

// Applies `cast` to every tensor argument, in lists and optionals too.
template <typename Cast>
void cast_tensors(torch::jit::Stack* stack, Cast cast) {
  for (c10::IValue& value : *stack) {
    if (value.isTensor()) {
      value = cast(value.toTensor());
    } else if (value.isTensorList()) {
      std::vector<at::Tensor> items = value.toTensorVector();
      for (at::Tensor& item : items) item = cast(item);
      value = c10::IValue(items);
    } else if (value.isList()) {
      // Tensor?[] (index_put's indices): cast the tensors, keep the Nones.
      c10::List<c10::IValue> items = value.toList();
      bool has_tensor = false;
      for (size_t i = 0; i < items.size(); ++i) {
        const c10::IValue item = items.get(i);
        if (item.isTensor()) {
          items.set(i, cast(item.toTensor()));
          has_tensor = true;
        }
      }
      if (has_tensor) value = c10::IValue(items);
    }
  }
}

bool eligible(const at::Tensor& t) {
  return at::autocast::is_eligible(t, c10::DeviceType::PrivateUse1);
}

void apply_policy(CastPolicy policy, const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  const auto device = c10::DeviceType::PrivateUse1;
  const at::ScalarType lower = at::autocast::get_autocast_dtype(device);
  switch (policy) {
    case CastPolicy::kLowerPrecision:
      cast_tensors(
          stack, [&](const at::Tensor& t) { return at::autocast::cached_cast(lower, t, device); });
      return;
    case CastPolicy::kFloat32:
      cast_tensors(stack, [&](const at::Tensor& t) {
        return at::autocast::cached_cast(at::kFloat, t, device);
      });
      return;
    case CastPolicy::kFloat32Dtype: {
      // As torch's fp32_set_opt_dtype: when the first tensor argument is
      // eligible, an unset `dtype` argument becomes float32.
      const at::Tensor* first = nullptr;
      for (const c10::IValue& value : *stack) {
        if (value.isTensor()) {
          first = &value.toTensor();
          break;
        }
      }
      if (!first || !eligible(*first)) return;
      const auto& arguments = op.schema().arguments();
      for (size_t i = 0; i < arguments.size() && i < stack->size(); ++i) {
        if (arguments[i].name() == "dtype" && (*stack)[i].isNone()) {
          (*stack)[i] = c10::IValue(static_cast<int64_t>(at::kFloat));
        }
      }
      return;
    }
    case CastPolicy::kPromote: {
      at::ScalarType widest = lower;
      cast_tensors(stack, [&](const at::Tensor& t) {
        if (eligible(t)) widest = at::promote_types(widest, t.scalar_type());
        return t;
      });
      cast_tensors(
          stack, [&](const at::Tensor& t) { return at::autocast::cached_cast(widest, t, device); });
      return;
    }
    case CastPolicy::kBanned:
      TORCH_CHECK(false, op.schema().name(),
                  " is unsafe to autocast on a cuda device, as on CUDA: many models use a "
                  "sigmoid layer right before it. Combine the two with "
                  "torch.nn.functional.binary_cross_entropy_with_logits or "
                  "torch.nn.BCEWithLogitsLoss, which are safe to autocast.");
  }
}

// The AutocastPrivateUse1 kernel of every op either list names.
void autocast_kernel(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  const size_t count = op.schema().arguments().size();
  torch::jit::Stack arguments(stack->end() - count, stack->end());
  const std::vector<at::Tensor> mycelya = mycelya_inputs(arguments);
  if (!mycelya.empty()) {
    const PolicyTable& table =
        is_remote_cpu(*device_entry(mycelya.front())) ? cpu_policies() : cuda_policies();
    const auto it = table.find(op_key(op.schema().operator_name()));
    if (it != table.end()) {
      apply_policy(it->second, op, &arguments);
      std::copy(arguments.begin(), arguments.end(), stack->end() - count);
    }
  }
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastPrivateUse1);
  op.callBoxed(stack);
}

}  // namespace

void register_autocast_kernels(torch::Library& m) {
  std::unordered_set<std::string> names;
  for (const auto& [name, policy] : cuda_policies()) names.insert(name);
  for (const auto& [name, policy] : cpu_policies()) names.insert(name);
  for (const std::string& name : names) {
    const auto dot = name.find('.');
    const auto op = c10::Dispatcher::singleton().findOp(
        {"aten::" + name.substr(0, dot), dot == std::string::npos ? "" : name.substr(dot + 1)});
    if (!op) continue;  // an op this build of torch does not have
    m.impl(name.c_str(), torch::CppFunction::makeFromBoxedFunction<&autocast_kernel>());
  }
}

}  // namespace mycelya
