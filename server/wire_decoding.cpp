// SPDX-License-Identifier: AGPL-3.0-or-later
//
// Wire decoding: a TensorRef becomes a tensor over the session's storage (made
// on first use), and a wire::Value the IValue its schema argument expects.
// Every size, stride, offset, dtype and device slot is checked first.
#include "server/wire_decoding.h"

#include <ATen/ATen.h>
#include <c10/util/strides.h>

#include <cstring>

#include "proto/schema_types.h"
#include "proto/tensor_geometry.h"
#include "server/executor.h"

namespace mycelya {
namespace {

// Whether a view lays its elements out one after another, as a contiguous
// tensor does (dimensions of size 1 may have any stride).
bool is_row_major(const wire::TensorRef& ref) {
  const auto expected = c10::contiguous_strides(ref_sizes(ref));
  for (int d = 0; d < ref.sizes_size(); ++d) {
    if (ref.sizes(d) != 1 && ref.strides(d) != expected[d]) return false;
  }
  return ref.sizes_size() == ref.strides_size();
}

}  // namespace

at::Tensor Executor::tensor_for(const wire::TensorRef& ref) {
  return tensor_for(ref, /*zero_new_storage=*/true);
}

at::Tensor Executor::tensor_to_overwrite(const wire::TensorRef& ref) {
  const uint64_t needed = required_storage_bytes(ref);  // checks the geometry first
  const bool covers_storage =
      ref.storage_offset() == 0 && is_row_major(ref) && needed == ref.storage_nbytes();
  return tensor_for(ref, /*zero_new_storage=*/!covers_storage);
}

at::Tensor Executor::tensor_for(const wire::TensorRef& ref, bool zero_new_storage) {
  const c10::Device device = device_for(ref.device());
  const c10::ScalarType dtype = ref_dtype(ref.dtype());
  const uint64_t needed = required_storage_bytes(ref);
  const c10::Storage* kept = storages_.find(ref.storage_id());
  if (!kept) {
    TORCH_CHECK(ref.storage_id() != 0, "storage ID 0 names no storage");
    // First use: the storage is created now, as the client's allocation promised.
    TORCH_CHECK(needed <= ref.storage_nbytes(), "a view of storage ", ref.storage_id(), " needs ",
                needed, " bytes, but the storage is to hold ", ref.storage_nbytes());
    storages_.keep(ref.storage_id(),
                   storages_.allocate(ref.storage_nbytes(), device, zero_new_storage));
    kept = storages_.find(ref.storage_id());
  }
  const c10::Storage& storage = *kept;
  TORCH_CHECK(storage.device() == device, "storage ", ref.storage_id(), " lives on ",
              storage.device(), ", not on device slot ", ref.device());
  TORCH_CHECK(needed <= storage.nbytes(), "storage ", ref.storage_id(), " holds ", storage.nbytes(),
              " bytes, too few for a view that needs ", needed);
  // Built directly, not through empty() + set_(): two dispatcher calls per
  // tensor argument were a large share of a small op's cost.
  at::Tensor tensor = at::detail::make_tensor<c10::TensorImpl>(
      c10::Storage(storage),
      c10::DispatchKeySet(c10::computeDispatchKey(dtype, c10::kStrided, storage.device())),
      c10::scalarTypeToTypeMeta(dtype));
  tensor.unsafeGetTensorImpl()->set_sizes_and_strides(ref_sizes(ref), ref_strides(ref),
                                                      ref.storage_offset());
  if (ref.conj()) tensor._set_conj(true);
  if (ref.neg()) tensor._set_neg(true);
  return tensor;
}

c10::IValue Executor::decode_value(const wire::Value& value, const c10::TypePtr& type) {
  switch (value.kind_case()) {
    case wire::Value::kNone:
    case wire::Value::KIND_NOT_SET:
      // A random kernel given no generator would draw from the process's
      // own, shared by every session: the client always names one.
      TORCH_CHECK(!is_generator_type(type),
                  "a Generator argument arrived empty; name the device's generator");
      return c10::IValue();
    case wire::Value::kTensor:
      return tensor_for(value.tensor());
    case wire::Value::kIntValue:
      return value.int_value();
    case wire::Value::kDoubleValue:
      return value.double_value();
    case wire::Value::kBoolValue:
      return value.bool_value();
    case wire::Value::kComplexValue:
      return c10::complex<double>(value.complex_value().real(), value.complex_value().imag());
    case wire::Value::kStringValue:
      return value.string_value();
    case wire::Value::kIntList:
      return c10::List<int64_t>(
          std::vector<int64_t>(value.int_list().values().begin(), value.int_list().values().end()));
    case wire::Value::kDoubleList:
      return c10::List<double>(std::vector<double>(value.double_list().values().begin(),
                                                   value.double_list().values().end()));
    case wire::Value::kBoolList: {
      c10::List<bool> list;
      for (bool b : value.bool_list().values()) list.push_back(b);
      return list;
    }
    case wire::Value::kDevice:
      return device_for(value.device());
    case wire::Value::kGenerator:
      return generators_.get(value.generator());
    case wire::Value::kCpuScalar: {
      const auto& scalar = value.cpu_scalar();
      at::Tensor tensor = at::empty({}, at::TensorOptions().dtype(ref_dtype(scalar.dtype())));
      TORCH_CHECK(scalar.data().size() == tensor.nbytes(), "malformed CPU scalar");
      std::memcpy(tensor.data_ptr(), scalar.data().data(), scalar.data().size());
      tensor.unsafeGetTensorImpl()->set_wrapped_number(scalar.wrapped_number());
      return tensor;
    }
    case wire::Value::kList: {
      // The schema says which list type the kernel expects.
      c10::TypePtr element = type;
      if (auto optional = type->cast<c10::OptionalType>()) element = optional->getElementType();
      auto list_type = element->cast<c10::ListType>();
      const bool optional_tensors =
          list_type && list_type->getElementType()->kind() == c10::TypeKind::OptionalType;
      if (optional_tensors) {
        c10::List<std::optional<at::Tensor>> list;
        for (const auto& item : value.list().values()) {
          if (item.has_tensor()) {
            list.push_back(tensor_for(item.tensor()));
          } else if (item.has_cpu_scalar()) {
            list.push_back(decode_value(item, c10::TensorType::get()).toTensor());
          } else {
            list.push_back(std::nullopt);
          }
        }
        return list;
      }
      if (list_type && list_type->getElementType()->kind() == c10::TypeKind::TensorType) {
        c10::List<at::Tensor> list;
        for (const auto& item : value.list().values()) {
          list.push_back(decode_value(item, c10::TensorType::get()).toTensor());
        }
        return list;
      }
      // Lists of scalars arrive as typed lists; an empty generic list is an empty int list.
      TORCH_CHECK(value.list().values_size() == 0, "unsupported list argument of type ",
                  type->str());
      return c10::List<int64_t>();
    }
  }
  return c10::IValue();
}

}  // namespace mycelya
