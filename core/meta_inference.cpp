// SPDX-License-Identifier: AGPL-3.0-or-later
#include "core/meta_inference.h"

#include <c10/core/DefaultDtype.h>
#include <c10/core/TensorImpl.h>

#include <cstring>
#include <string>
#include <unordered_map>

#include "core/logging.h"

namespace mycelya {
namespace {

template <typename Visit>
void for_each_tensor(c10::ArrayRef<c10::IValue> args, Visit visit) {
  for (const auto& arg : args) {
    if (arg.isTensor()) {
      visit(arg.toTensor());
    } else if (arg.isTensorList() || arg.isList()) {
      for (const c10::IValue& item : arg.toListRef()) {
        if (item.isTensor()) visit(item.toTensor());
      }
    }
  }
}

// Mirrors one call's mycelya arguments as meta tensors. Mycelya tensors that
// share a storage get meta tensors that share one, so aliasing shows.
class MetaMirror {
 public:
  explicit MetaMirror(const std::vector<at::Tensor>& inputs) : inputs_(inputs) {}

  c10::IValue to_meta(const c10::IValue& value) {
    if (value.isTensor()) return to_meta(value.toTensor());
    if (value.isTensorList()) {
      c10::List<at::Tensor> list;
      for (const at::Tensor& t : value.toTensorVector()) list.push_back(to_meta(t));
      return list;
    }
    if (value.isList()) {
      // Tensor?[] (index.Tensor) and other generic lists.
      auto in = value.toList();
      c10::impl::GenericList out(in.elementType());
      for (const c10::IValue& item : in) {
        out.push_back(item.isTensor() ? c10::IValue(to_meta(item.toTensor())) : item);
      }
      return out;
    }
    if (value.isDevice() && value.toDevice().is_privateuseone()) return c10::Device(c10::kMeta);
    return value;
  }

  PlannedTensor plan(const at::Tensor& meta) const {
    PlannedTensor planned;
    if (!meta.defined()) return planned;
    planned.sizes = meta.sizes().vec();
    planned.strides = meta.strides().vec();
    planned.storage_offset = meta.storage_offset();
    planned.dtype = meta.dtype();
    planned.storage_nbytes = meta.storage().nbytes();
    auto input = input_of_.find(meta.unsafeGetTensorImpl());
    if (input != input_of_.end()) {
      planned.kind = PlannedTensor::Kind::kInput;  // in-place or out=
      planned.input = input->second;
      return planned;
    }
    auto owner = owner_of_.find(meta.storage().unsafeGetStorageImpl());
    if (owner != owner_of_.end()) {
      planned.kind = PlannedTensor::Kind::kView;
      planned.input = owner->second;
      return planned;
    }
    planned.kind = PlannedTensor::Kind::kNew;
    return planned;
  }

 private:
  at::Tensor to_meta(const at::Tensor& tensor) {
    if (!tensor.defined() || !tensor.is_privateuseone()) return tensor;
    const int index = next_input_++;
    TORCH_INTERNAL_ASSERT(index < static_cast<int>(inputs_.size()) &&
                          inputs_[index].unsafeGetTensorImpl() == tensor.unsafeGetTensorImpl());
    auto* remote_storage = tensor.storage().unsafeGetStorageImpl();
    auto it = storages_.find(remote_storage);
    if (it == storages_.end()) {
      c10::Storage storage(c10::Storage::use_byte_size_t(), tensor.storage().nbytes(),
                           c10::GetAllocator(c10::kMeta), /*resizable=*/true);
      owner_of_.emplace(storage.unsafeGetStorageImpl(), index);
      it = storages_.emplace(remote_storage, std::move(storage)).first;
    }
    auto meta = at::detail::make_tensor<c10::TensorImpl>(
        c10::Storage(it->second), c10::DispatchKeySet(c10::DispatchKey::Meta), tensor.dtype());
    meta.unsafeGetTensorImpl()->set_sizes_and_strides(tensor.sizes(), tensor.strides(),
                                                      tensor.storage_offset());
    input_of_.emplace(meta.unsafeGetTensorImpl(), index);
    return meta;
  }

  const std::vector<at::Tensor>& inputs_;
  int next_input_ = 0;
  std::unordered_map<c10::StorageImpl*, c10::Storage> storages_;
  std::unordered_map<c10::StorageImpl*, int> owner_of_;  // meta storage -> input index
  std::unordered_map<c10::TensorImpl*, int> input_of_;   // meta tensor -> input index
};

// The cache key: everything a meta kernel can see, which is everything but
// tensor data. Returns false for arguments that are not worth keying.
class KeyWriter {
 public:
  // Floating-point scalars (alpha, lr, momentum...) change from call to call
  // in optimizers, but only range-like ops derive shapes from them, so only
  // those key their values.
  KeyWriter(const std::vector<at::Tensor>& inputs, bool key_float_values)
      : inputs_(inputs), key_float_values_(key_float_values) {}

  bool write(const c10::IValue& value) {
    if (value.isNone()) return tag('N');
    if (value.isTensor()) return write(value.toTensor());
    if (value.isBool()) return tag('b') && pod(value.toBool());
    if (value.isInt()) return tag('i') && pod(value.toInt());
    if (value.isDouble()) return tag('d') && (!key_float_values_ || pod(value.toDouble()));
    if (value.isSymInt()) return tag('i') && pod(value.toSymInt().guard_int(__FILE__, __LINE__));
    if (value.isComplexDouble()) {
      return tag('c') && (!key_float_values_ || pod(value.toComplexDouble()));
    }
    if (value.isString()) {
      const auto& s = value.toStringRef();
      return tag('s') && pod(s.size()) && (key_.append(s), true);
    }
    if (value.isIntList()) {
      auto list = value.toIntList();
      tag('I');
      pod(list.size());
      for (int64_t v : list) pod(v);
      return true;
    }
    if (value.isDevice())
      return tag('D') && pod(value.toDevice().type()) && pod(value.toDevice().index());
    if (value.isTensorList() || value.isList()) {
      const auto& items = value.toListRef();
      tag('L');
      pod(items.size());
      for (const c10::IValue& item : items) {
        if (!write(item)) return false;
      }
      return true;
    }
    if (value.isDoubleList() || value.isBoolList()) {
      const auto& items = value.toListRef();
      tag('F');
      pod(items.size());
      for (const c10::IValue& item : items) write(item);
      return true;
    }
    return false;  // generators and rarer types: plan without caching
  }

  std::string& key() { return key_; }

 private:
  bool write(const at::Tensor& tensor) {
    if (!tensor.defined()) return tag('U');
    if (!tensor.is_privateuseone()) {
      // CPU scalars: their values cannot change output metadata, only their type.
      return tag('C') && pod(tensor.scalar_type()) && pod(tensor.dim()) &&
             pod(tensor.unsafeGetTensorImpl()->is_wrapped_number());
    }
    tag('T');
    pod(tensor.device().index());
    pod(tensor.scalar_type());
    pod(tensor.dim());
    for (int64_t s : tensor.sizes()) pod(s);
    for (int64_t s : tensor.strides()) pod(s);
    pod(tensor.storage_offset());
    pod(tensor.storage().nbytes());
    // Which earlier input shares this storage: aliasing changes what meta says.
    const auto* storage = tensor.storage().unsafeGetStorageImpl();
    int32_t first = 0;
    while (inputs_[first].storage().unsafeGetStorageImpl() != storage) ++first;
    return pod(first);
  }

  bool tag(char c) {
    key_.push_back(c);
    return true;
  }
  template <typename T>
  bool pod(const T& value) {
    key_.append(reinterpret_cast<const char*>(&value), sizeof(value));
    return true;
  }

  const std::vector<at::Tensor>& inputs_;
  const bool key_float_values_;
  std::string key_;
};

// arange, range, linspace, logspace: output sizes computed from float scalars.
bool shape_depends_on_float_scalars(const c10::OperatorHandle& op) {
  const std::string& name = op.operator_name().name;
  return name.find("range") != std::string::npos || name.find("space") != std::string::npos;
}

using PlanCache = std::unordered_map<std::string, std::shared_ptr<const OutputPlan>>;

// Per thread: no lock on the hot path (autograd runs backward on its own thread).
PlanCache& thread_cache() {
  thread_local PlanCache cache;
  return cache;
}

}  // namespace

size_t cached_plans() { return thread_cache().size(); }

std::vector<at::Tensor> mycelya_inputs(c10::ArrayRef<c10::IValue> args) {
  std::vector<at::Tensor> inputs;
  for_each_tensor(args, [&](const at::Tensor& t) {
    if (t.defined() && t.is_privateuseone()) inputs.push_back(t);
  });
  return inputs;
}

std::shared_ptr<const OutputPlan> plan_outputs(const c10::OperatorHandle& op,
                                               c10::ArrayRef<c10::IValue> args,
                                               const std::vector<at::Tensor>& inputs) {
  PlanCache& cache = thread_cache();
  KeyWriter writer(inputs, shape_depends_on_float_scalars(op));
  const void* schema = &op.schema();
  writer.key().append(reinterpret_cast<const char*>(&schema), sizeof(schema));
  // Factory-like ops fall back on the default dtype when given none.
  const auto default_dtype = c10::get_default_dtype_as_scalartype();
  writer.key().append(reinterpret_cast<const char*>(&default_dtype), sizeof(default_dtype));
  bool cacheable = true;
  for (const auto& arg : args) {
    if (!writer.write(arg)) {
      cacheable = false;
      break;
    }
  }
  if (cacheable) {
    auto hit = cache.find(writer.key());
    if (hit != cache.end()) return hit->second;
  }

  if (log_enabled(kDebug)) {
    log_debug(std::string(cacheable ? "meta plan cache miss: " : "meta plan not cacheable: ") +
              op.operator_name().name + "." + op.operator_name().overload_name);
  }
  MetaMirror mirror(inputs);
  torch::jit::Stack stack;
  stack.reserve(args.size());
  for (const auto& arg : args) stack.push_back(mirror.to_meta(arg));
  op.callBoxed(&stack);

  auto plan = std::make_shared<OutputPlan>();
  plan->returns.reserve(stack.size());
  for (const auto& result : stack) {
    PlannedReturn planned;
    if (result.isTensor()) {
      planned.kind = PlannedReturn::Kind::kTensor;
      planned.tensors.push_back(mirror.plan(result.toTensor()));
    } else if (result.isTensorList()) {
      planned.kind = PlannedReturn::Kind::kTensorList;
      for (const at::Tensor& t : result.toTensorVector()) planned.tensors.push_back(mirror.plan(t));
    } else {
      planned.value = result;
    }
    plan->returns.push_back(std::move(planned));
  }
  if (cacheable) {
    if (cache.size() >= kMaxCachedPlans) cache.clear();
    cache.emplace(std::move(writer.key()), plan);
  }
  return plan;
}

}  // namespace mycelya
