// SPDX-License-Identifier: AGPL-3.0-or-later
//
// The boxed fallback: every ATen op on a mycelya tensor that has no kernel of
// its own lands here. It runs the op on meta tensors to learn what the outputs
// look like (shapes, strides, dtypes, which outputs are inputs or views of
// them), makes the local outputs (IDs only), and queues one record for the
// machine. Nothing waits for the network.
//
// When meta cannot answer (outputs whose shape depends on data, such as
// nonzero or masked_select, or ops with no meta kernel) the op runs
// synchronously remotely and the machine reports the outputs' metadata.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/op_registration/op_registration.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/alloc_cpu.h>
#include <torch/library.h>

#include <unordered_map>

#include "core/allocator.h"
#include "core/logging.h"
#include "core/machine.h"
#include "core/meta_inference.h"
#include "core/op_encoding.h"
#include "core/registration.h"
#include "core/remote_tensor.h"
#include "proto/tensor_geometry.h"

namespace mycelya {
namespace {

// Whether the schema says the op writes any argument.
bool mutates_arguments(const c10::FunctionSchema& schema) {
  for (const auto& arg : schema.arguments()) {
    if (arg.alias_info() && arg.alias_info()->isWrite()) return true;
  }
  return false;
}

// Makes the local outputs a plan describes; new ones get a ref in `record`.
struct OutputMaker {
  const std::vector<at::Tensor>& inputs;
  const OpPlacement& placement;
  wire::OpRecord& record;
  bool has_new_output = false;

  at::Tensor make(const PlannedTensor& planned) {
    auto* ref = record.add_outputs();  // stays all-zero unless the output is new
    switch (planned.kind) {
      case PlannedTensor::Kind::kUndefined:
        return at::Tensor();
      case PlannedTensor::Kind::kInput: {
        // In-place or out=: the op may have resized or restrided its output.
        const at::Tensor& tensor = inputs[planned.input];
        if (planned.storage_nbytes > tensor.storage().nbytes()) {
          resize_remote_storage(tensor, planned.storage_nbytes);
        }
        if (tensor.sizes() != planned.sizes || tensor.strides() != planned.strides ||
            tensor.storage_offset() != planned.storage_offset) {
          tensor.unsafeGetTensorImpl()->set_sizes_and_strides(planned.sizes, planned.strides,
                                                              planned.storage_offset);
        }
        return tensor;
      }
      case PlannedTensor::Kind::kView:
        return alias_remote(inputs[planned.input], planned.sizes, planned.strides,
                            planned.storage_offset, planned.dtype);
      case PlannedTensor::Kind::kNew:
        break;
    }
    has_new_output = true;
    at::Tensor tensor = empty_remote(planned.sizes, planned.strides, planned.storage_offset,
                                     planned.dtype, placement.entry, planned.storage_nbytes);
    write_tensor_ref(tensor, storage_id(tensor.storage()), placement.entry->slot, ref);
    return tensor;
  }

  c10::IValue make(const PlannedReturn& planned) {
    switch (planned.kind) {
      case PlannedReturn::Kind::kTensor:
        return make(planned.tensors[0]);
      case PlannedReturn::Kind::kTensorList: {
        c10::List<at::Tensor> list;
        for (const auto& t : planned.tensors) list.push_back(make(t));
        return list;
      }
      case PlannedReturn::Kind::kValue:
        break;
    }
    return planned.value;
  }
};

// Where a remote CPU kernel returns outputs unlike the meta kernel (which
// follows CUDA), plans what the remote kernel returns, so that the ops reading
// those outputs (the backward) get what that kernel expects. CPU's batch and
// layer norms keep their saved statistics in the input's dtype when it is
// half or bfloat16 and no parameter is float32, and batch norm in eval mode
// returns them empty.
std::shared_ptr<const OutputPlan> as_remote_kernel_returns(const c10::OperatorHandle& op,
                                                           c10::ArrayRef<c10::IValue> args,
                                                           const OpPlacement& placement,
                                                           std::shared_ptr<const OutputPlan> plan) {
  const std::string& name = op.schema().name();
  const bool layer_norm = name == "aten::native_layer_norm";
  const bool no_training = name == "aten::_native_batch_norm_legit_no_training";
  const bool batch_norm = no_training || name == "aten::native_batch_norm" ||
                          name == "aten::_native_batch_norm_legit" ||
                          name == "aten::_batch_norm_with_update";
  if (!(layer_norm || batch_norm) || !is_remote_cpu(*placement.entry)) return plan;
  if (args.empty() || !args[0].isTensor() || plan->returns.size() < 3) return plan;

  // native_batch_norm and _native_batch_norm_legit: (input, weight, bias,
  // running_mean, running_var, training, ...); the no_stats overload has no
  // bool there.
  const bool eval = no_training || (name != "aten::_batch_norm_with_update" && args.size() > 5 &&
                                    args[5].isBool() && !args[5].toBool());
  const c10::ScalarType input_dtype = args[0].toTensor().scalar_type();
  const bool reduced = input_dtype == c10::kHalf || input_dtype == c10::kBFloat16;
  bool float_parameter = false;
  const size_t first = layer_norm ? 2 : 1, last = layer_norm ? 3 : 4;
  for (size_t i = first; i <= last && i < args.size(); ++i) {
    if (args[i].isTensor() && args[i].toTensor().scalar_type() == c10::kFloat)
      float_parameter = true;
  }
  const bool input_dtype_stats = reduced && !float_parameter;
  if (!eval && !input_dtype_stats) return plan;

  auto adjusted = std::make_shared<OutputPlan>(*plan);
  for (size_t r = 1; r <= 2; ++r) {
    PlannedTensor& saved = adjusted->returns[r].tensors.at(0);
    if (input_dtype_stats) {
      saved.dtype = c10::scalarTypeToTypeMeta(input_dtype);
      saved.storage_nbytes = required_storage_bytes(saved.sizes, saved.strides,
                                                    saved.storage_offset, saved.dtype.itemsize());
    }
    if (eval && batch_norm) {
      saved.sizes = {0};
      saved.strides = {1};
      saved.storage_offset = 0;
      saved.storage_nbytes = 0;
    }
  }
  return adjusted;
}

// CPU's embedding bag returns bookkeeping outputs (offset2bag, bag_size,
// max_indices) shaped by rules of its own, unlike the meta kernel: such ops
// run synchronously on a remote CPU, which reports the real shapes.
bool shapes_known_only_remotely(const c10::OperatorHandle& op, const OpPlacement& placement) {
  const std::string& name = op.schema().name();
  return (name == "aten::_embedding_bag" || name == "aten::_embedding_bag_forward_only") &&
         is_remote_cpu(*placement.entry);
}

// Gives a local tensor the geometry the machine reports for it after an op
// resized it there (the machine's storage already has the new size).
void adopt_remote_geometry(const at::Tensor& tensor, const wire::TensorRef& remote) {
  c10::StorageImpl* storage = tensor.storage().unsafeGetStorageImpl();
  if (remote.storage_nbytes() > storage->nbytes()) storage->set_nbytes(remote.storage_nbytes());
  std::vector<int64_t> sizes(remote.sizes().begin(), remote.sizes().end());
  std::vector<int64_t> strides(remote.strides().begin(), remote.strides().end());
  tensor.unsafeGetTensorImpl()->set_sizes_and_strides(sizes, strides, remote.storage_offset());
}

// Storage IDs reserved for a Tensor[] return of an op run synchronously:
// more than any such op returns (the machine refuses to exceed them).
constexpr size_t kReservedListOutputs = 64;

// The argument that return `r` of `schema` is, when the schema annotates it
// as a written argument (Tensor(a!) in-place and out= returns).
std::optional<size_t> returned_argument(const c10::FunctionSchema& schema, size_t r,
                                        const std::vector<c10::IValue>& inputs) {
  const auto& ret = schema.returns()[r];
  if (!ret.alias_info()) return std::nullopt;
  for (size_t a = 0; a < schema.arguments().size(); ++a) {
    const auto& arg = schema.arguments()[a];
    if (arg.alias_info() && arg.alias_info()->isWrite() &&
        arg.alias_info()->beforeSets() == ret.alias_info()->beforeSets() && inputs[a].isTensor()) {
      return a;
    }
  }
  return std::nullopt;
}

// Runs an op whose outputs meta could not describe: synchronously, remotely.
void run_remotely_now(const c10::OperatorHandle& op, torch::jit::Stack* stack,
                      const OpPlacement& placement, const std::string& meta_error) {
  const auto& schema = op.schema();
  const size_t num_args = schema.arguments().size();
  auto args = torch::jit::last(*stack, num_args);
  log_debug("running " + op_display_name(op) + " synchronously: " + meta_error);

  wire::Request request;
  auto* record = request.mutable_execute()->mutable_op();
  *record = encode_op(op, args, placement);
  // Reserve IDs for every returned tensor; Tensor[] returns get a generous block.
  for (const auto& ret : schema.returns()) {
    const size_t count = ret.type()->kind() == c10::TypeKind::ListType ? kReservedListOutputs : 1;
    for (size_t i = 0; i < count; ++i) {
      record->add_outputs()->set_storage_id(next_storage_id());
    }
  }
  wire::Response response =
      placement.entry->machine->request(std::move(request), nullptr, placement.entry.get());

  std::vector<c10::IValue> inputs(args.begin(), args.end());
  auto output_for = [&](const wire::OutputInfo& info) -> c10::IValue {
    switch (info.kind_case()) {
      case wire::OutputInfo::kTensor:
        return remote_from_ref(info.tensor(), placement.entry);
      case wire::OutputInfo::kInputIndex: {
        const at::Tensor& base = inputs.at(info.input_index()).toTensor();
        const auto& view = info.view();
        std::vector<int64_t> sizes(view.sizes().begin(), view.sizes().end());
        std::vector<int64_t> strides(view.strides().begin(), view.strides().end());
        return alias_remote(base, sizes, strides, view.storage_offset(),
                            c10::scalarTypeToTypeMeta(static_cast<c10::ScalarType>(view.dtype())));
      }
      case wire::OutputInfo::kValue: {
        const auto& v = info.value();
        if (v.has_bool_value()) return v.bool_value();
        if (v.has_int_value()) return v.int_value();
        if (v.has_double_value()) return v.double_value();
        return c10::IValue();
      }
      default:
        return c10::IValue();
    }
  };

  TORCH_CHECK(response.outputs_size() == static_cast<int>(schema.returns().size()),
              "mycelya: ", op_display_name(op), " has ", schema.returns().size(),
              " returns, the machine sent ", response.outputs_size());
  torch::jit::drop(*stack, num_args);
  for (size_t r = 0; r < schema.returns().size(); ++r) {
    const auto& info = response.outputs(static_cast<int>(r));
    // A return annotated like an argument (Tensor(a!)) is that argument itself.
    if (const std::optional<size_t> a = returned_argument(schema, r, inputs)) {
      // The kernel may have resized it (out= tensors): take the remote geometry.
      if (info.kind_case() == wire::OutputInfo::kInputIndex) {
        adopt_remote_geometry(inputs[*a].toTensor(), info.view());
      }
      stack->push_back(inputs[*a]);
    } else if (info.kind_case() == wire::OutputInfo::kList) {
      c10::List<at::Tensor> list;
      for (const auto& item : info.list().items()) list.push_back(output_for(item).toTensor());
      stack->push_back(list);
    } else {
      stack->push_back(output_for(info));
    }
  }
}

// PyTorch lets the index tensors of x[indices] and index_put_ live on the CPU
// while x is on an accelerator; upload them to x's device, as CUDA does.
void upload_cpu_indices(const c10::FunctionSchema& schema, torch::jit::Stack* stack) {
  const size_t num_args = schema.arguments().size();
  c10::IValue* args = stack->data() + (stack->size() - num_args);
  if (num_args == 0 || !args[0].isTensor() || !args[0].toTensor().is_privateuseone()) return;
  for (size_t i = 1; i < num_args; ++i) {
    if (!args[i].isList() || schema.arguments()[i].name() != "indices") continue;
    auto indices = args[i].to<c10::List<std::optional<at::Tensor>>>();
    for (size_t k = 0; k < indices.size(); ++k) {
      std::optional<at::Tensor> index = indices.get(k);
      if (index && index->defined() && index->is_cpu()) {
        indices.set(k, index->to(args[0].toTensor().device()));
      }
    }
    args[i] = indices;
  }
}

}  // namespace

void remote_fallback(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  const auto& schema = op.schema();
  const size_t num_args = schema.arguments().size();
  // Storage IDs describe strided tensors only; say so before the machine fails obscurely.
  TORCH_CHECK_NOT_IMPLEMENTED(schema.name().find("sparse") == std::string::npos,
                              "mycelya supports only strided (dense) tensors; ",
                              op_display_name(op),
                              " works on sparse tensors. Keep sparse work on the CPU.");
  check_op_allowed(op);
  upload_cpu_indices(schema, stack);
  auto args = torch::jit::last(*stack, num_args);
  OpPlacement placement = place_op(op, args);
  c10::DeviceGuard guard(c10::Device(c10::DeviceType::PrivateUse1, placement.device()));

  const std::vector<at::Tensor> inputs = mycelya_inputs(args);
  std::shared_ptr<const OutputPlan> plan;
  if (shapes_known_only_remotely(op, placement)) {
    run_remotely_now(op, stack, placement, "output shapes differ from the meta kernel's");
    return;
  }
  try {
    plan = as_remote_kernel_returns(op, args, placement, plan_outputs(op, args, inputs));
  } catch (const std::exception& e) {
    run_remotely_now(op, stack, placement, e.what());
    return;
  }

  wire::Command command;
  wire::OpRecord* record = command.mutable_op();
  OutputMaker outputs{inputs, placement, *record};
  torch::jit::Stack results;
  results.reserve(plan->returns.size());
  for (const auto& planned : plan->returns) results.push_back(outputs.make(planned));

  // Pure view and metadata ops (transpose, view_as_real, ...) send nothing.
  if (outputs.has_new_output || mutates_arguments(schema)) {
    // Arguments are encoded after outputs so that out= tensors carry their new shape.
    wire::OpRecord encoded = encode_op(op, args, placement);
    encoded.mutable_outputs()->Swap(record->mutable_outputs());
    *record = std::move(encoded);
    placement.entry->machine->enqueue(std::move(command), placement.entry.get());
  }
  torch::jit::drop(*stack, num_args);
  for (auto& result : results) stack->push_back(std::move(result));
}

// Functional ops generated from their out= variants (add.Tensor from add.out)
// carry a CompositeExplicitAutogradNonFunctional kernel, which would otherwise
// win over the fallback and run shape and device checks on mycelya tensors
// themselves, then call the out= op. Routing them to the fallback directly
// keeps one meta pass per op and lets the fallback's own device checks (with
// their cross-machine message) speak first.
bool routes_to_fallback(const c10::OperatorName& name) {
  if (name.name.rfind("aten::", 0) != 0) return false;
  // For backends it does not know, convolution lowers to convolution_overrideable,
  // which no remote kernel implements: send the op itself, so the remote side
  // picks its own CPU or cuDNN kernel.
  if (name.name == "aten::convolution" || name.name == "aten::convolution_backward") return true;
  // Its CompositeExplicitAutograd kernel accepts only CPU, CUDA and XPU tensors.
  if (name.name == "aten::mode") return true;
  // Allocation and copies have kernels of their own (tensor_kernels.cpp, copy_kernels.cpp).
  if (name.name.find("empty") != std::string::npos || name.name == "aten::copy") return false;
  auto op = c10::Dispatcher::singleton().findOp(name);
  if (!op) return false;
  if (op->hasKernelForDispatchKey(c10::DispatchKey::CompositeExplicitAutogradNonFunctional)) {
    return true;
  }
  // A CompositeExplicitAutograd kernel beside a CPU one is a decomposition for
  // other backends (native_layer_norm, addr): with a meta kernel to plan with,
  // send the op itself, so the machine runs the kernel a CPU or CUDA user
  // gets, with the same rounding, as one op instead of several.
  return op->hasKernelForDispatchKey(c10::DispatchKey::CompositeExplicitAutograd) &&
         op->hasKernelForDispatchKey(c10::DispatchKey::CPU) &&
         op->hasKernelForDispatchKey(c10::DispatchKey::Meta);
}

}  // namespace mycelya
