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
#include "core/op_encoding.h"
#include "core/remote_tensor.h"

namespace mycelya {
namespace {

// Mirrors the mycelya arguments of one call as meta tensors, remembering which
// meta tensor and which meta storage stand for which mycelya ones.
class MetaMirror {
 public:
  c10::IValue to_meta(const c10::IValue& value) {
    if (value.isTensor()) return to_meta(value.toTensor());
    if (value.isTensorList()) {
      c10::List<at::Tensor> list;
      for (const at::Tensor& t : value.toTensorVector()) list.push_back(to_meta(t));
      return list;
    }
    if (value.isList()) {
      // Tensor?[] (e.g. index.Tensor) and other generic lists.
      auto in = value.toList();
      c10::impl::GenericList out(in.elementType());
      for (const c10::IValue& item : in) out.push_back(to_meta(item));
      return out;
    }
    if (value.isDevice() && value.toDevice().is_privateuseone()) return c10::Device(c10::kMeta);
    return value;
  }

  // The mycelya tensor a meta tensor mirrors, or nullptr.
  const at::Tensor* input_for(const at::Tensor& meta) const {
    auto it = inputs_.find(meta.unsafeGetTensorImpl());
    return it == inputs_.end() ? nullptr : &it->second;
  }

  // A mycelya tensor whose storage the meta tensor's storage mirrors, or nullptr.
  const at::Tensor* storage_owner_for(const at::Tensor& meta) const {
    auto it = owners_.find(meta.storage().unsafeGetStorageImpl());
    return it == owners_.end() ? nullptr : &it->second;
  }

 private:
  at::Tensor to_meta(const at::Tensor& tensor) {
    if (!tensor.defined() || !tensor.is_privateuseone()) return tensor;
    auto* key = tensor.storage().unsafeGetStorageImpl();
    auto it = storages_.find(key);
    if (it == storages_.end()) {
      c10::Storage storage(c10::Storage::use_byte_size_t(), tensor.storage().nbytes(),
                           c10::GetAllocator(c10::kMeta), /*resizable=*/true);
      owners_.emplace(storage.unsafeGetStorageImpl(), tensor);
      it = storages_.emplace(key, std::move(storage)).first;
    }
    auto meta = at::detail::make_tensor<c10::TensorImpl>(
        c10::Storage(it->second), c10::DispatchKeySet(c10::DispatchKey::Meta), tensor.dtype());
    meta.unsafeGetTensorImpl()->set_sizes_and_strides(tensor.sizes(), tensor.strides(),
                                                      tensor.storage_offset());
    inputs_.emplace(meta.unsafeGetTensorImpl(), tensor);
    return meta;
  }

  std::unordered_map<c10::StorageImpl*, c10::Storage> storages_;
  std::unordered_map<c10::StorageImpl*, at::Tensor> owners_;
  std::unordered_map<c10::TensorImpl*, at::Tensor> inputs_;
};

bool same_geometry(const at::Tensor& a, const at::Tensor& b) {
  return a.sizes() == b.sizes() && a.strides() == b.strides() &&
         a.storage_offset() == b.storage_offset();
}

// Whether the schema says the op writes any argument.
bool mutates_arguments(const c10::FunctionSchema& schema) {
  for (const auto& arg : schema.arguments()) {
    if (arg.alias_info() && arg.alias_info()->isWrite()) return true;
  }
  return false;
}

struct OutputBuilder {
  const MetaMirror& mirror;
  const OpPlacement& placement;
  wire::OpRecord& record;
  bool has_new_output = false;

  // The local mycelya value for one meta output.
  at::Tensor make(const at::Tensor& meta) {
    auto* ref = record.add_outputs();  // stays all-zero unless the output is new
    if (!meta.defined()) return meta;
    if (const at::Tensor* input = mirror.input_for(meta)) {
      // In-place or out=: the op may have resized or restrided its output.
      at::Tensor tensor = *input;
      if (!same_geometry(tensor, meta) || meta.storage().nbytes() > tensor.storage().nbytes()) {
        if (meta.storage().nbytes() > tensor.storage().nbytes()) {
          resize_remote_storage(tensor, meta.storage().nbytes());
        }
        tensor.unsafeGetTensorImpl()->set_sizes_and_strides(meta.sizes(), meta.strides(),
                                                            meta.storage_offset());
      }
      return tensor;
    }
    if (const at::Tensor* owner = mirror.storage_owner_for(meta)) {
      return alias_remote(*owner, meta.sizes(), meta.strides(), meta.storage_offset(),
                          meta.dtype());
    }
    has_new_output = true;
    at::Tensor tensor = empty_remote(meta.sizes(), meta.strides(), meta.storage_offset(),
                                     meta.dtype(), placement.device, meta.storage().nbytes());
    encode_tensor_ref(tensor, placement.entry.slot, ref);
    return tensor;
  }

  c10::IValue make(const c10::IValue& meta) {
    if (meta.isTensor()) return make(meta.toTensor());
    if (meta.isTensorList()) {
      c10::List<at::Tensor> list;
      for (const at::Tensor& t : meta.toTensorVector()) list.push_back(make(t));
      return list;
    }
    return meta;
  }
};

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
    const size_t count = ret.type()->kind() == c10::TypeKind::ListType ? 64 : 1;
    for (size_t i = 0; i < count; ++i) {
      record->add_outputs()->set_storage_id(next_storage_id());
    }
  }
  wire::Response response = placement.entry.machine->request(std::move(request));

  std::vector<c10::IValue> inputs(args.begin(), args.end());
  auto output_for = [&](const wire::OutputInfo& info) -> c10::IValue {
    switch (info.kind_case()) {
      case wire::OutputInfo::kTensor:
        return remote_from_ref(info.tensor(), placement.device);
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

  torch::jit::drop(*stack, num_args);
  for (size_t r = 0; r < schema.returns().size(); ++r) {
    const auto& info = response.outputs(static_cast<int>(r));
    const auto& ret = schema.returns()[r];
    // A return annotated like an argument (Tensor(a!)) is that argument itself.
    if (ret.alias_info()) {
      for (size_t a = 0; a < num_args; ++a) {
        const auto& arg = schema.arguments()[a];
        if (arg.alias_info() && arg.alias_info()->isWrite() &&
            arg.alias_info()->beforeSets() == ret.alias_info()->beforeSets() &&
            inputs[a].isTensor()) {
          stack->push_back(inputs[a]);
          goto next_return;
        }
      }
    }
    if (info.kind_case() == wire::OutputInfo::kList) {
      c10::List<at::Tensor> list;
      for (const auto& item : info.list().items()) list.push_back(output_for(item).toTensor());
      stack->push_back(list);
    } else {
      stack->push_back(output_for(info));
    }
  next_return:;
  }
}

void remote_fallback(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  const auto& schema = op.schema();
  const size_t num_args = schema.arguments().size();
  auto args = torch::jit::last(*stack, num_args);
  OpPlacement placement = place_op(op, args);
  c10::DeviceGuard guard(c10::Device(c10::DeviceType::PrivateUse1, placement.device));

  MetaMirror mirror;
  torch::jit::Stack meta_stack;
  meta_stack.reserve(num_args);
  for (const auto& arg : args) meta_stack.push_back(mirror.to_meta(arg));
  try {
    op.callBoxed(&meta_stack);
  } catch (const std::exception& e) {
    run_remotely_now(op, stack, placement, e.what());
    return;
  }

  wire::Command command;
  wire::OpRecord* record = command.mutable_op();
  OutputBuilder outputs{mirror, placement, *record};
  torch::jit::Stack results;
  results.reserve(meta_stack.size());
  for (const auto& meta : meta_stack) results.push_back(outputs.make(meta));

  // Pure view and metadata ops (transpose, view_as_real, ...) send nothing.
  if (outputs.has_new_output || mutates_arguments(schema)) {
    // Arguments are encoded after outputs so that out= tensors carry their new shape.
    wire::OpRecord encoded = encode_op(op, args, placement);
    encoded.mutable_outputs()->Swap(record->mutable_outputs());
    *record = std::move(encoded);
    placement.entry.machine->enqueue(std::move(command));
  }
  torch::jit::drop(*stack, num_args);
  for (auto& result : results) stack->push_back(std::move(result));
}

}  // namespace

TORCH_LIBRARY_IMPL(_, PrivateUse1, m) {
  m.fallback(torch::CppFunction::makeFromBoxedFunction<&remote_fallback>());
}

namespace {

// Functional ops generated from their out= variants (add.Tensor from add.out)
// carry a CompositeExplicitAutogradNonFunctional kernel, which would otherwise
// win over the fallback and run shape and device checks on mycelya tensors
// themselves, then call the out= op. Routing them to the fallback directly
// keeps one meta pass per op and lets the fallback's own device checks (with
// their cross-machine message) speak first.
bool route_to_fallback(const c10::OperatorName& name) {
  if (name.name.rfind("aten::", 0) != 0) return false;
  // For backends it does not know, convolution lowers to convolution_overrideable,
  // which no remote kernel implements: send the op itself, so the remote side
  // picks its own CPU or cuDNN kernel.
  if (name.name == "aten::convolution" || name.name == "aten::convolution_backward") return true;
  // Allocation and copies have kernels of their own (tensor_kernels.cpp, copy_kernels.cpp).
  if (name.name.find("empty") != std::string::npos || name.name == "aten::copy") return false;
  auto op = c10::Dispatcher::singleton().findOp(name);
  return op &&
         op->hasKernelForDispatchKey(c10::DispatchKey::CompositeExplicitAutogradNonFunctional);
}

torch::Library& functional_ops_library() {
  static torch::Library library(torch::Library::IMPL, "aten", c10::DispatchKey::PrivateUse1,
                                __FILE__, __LINE__);
  return library;
}

const bool functional_ops_routed = [] {
  for (const auto& name : c10::Dispatcher::singleton().getAllOpNames()) {
    if (!route_to_fallback(name)) continue;
    const std::string qualified =
        name.overload_name.empty() ? name.name : name.name + "." + name.overload_name;
    functional_ops_library().impl(qualified.c_str() + 6,  // without "aten::"
                                  torch::CppFunction::makeFromBoxedFunction<&remote_fallback>());
  }
  return true;
}();

}  // namespace

}  // namespace mycelya
