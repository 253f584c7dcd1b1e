// SPDX-License-Identifier: AGPL-3.0-or-later
#include "proto/tensor_geometry.h"

#include <c10/util/strides.h>

#include <stdexcept>
#include <string>

namespace mycelya {

uint64_t required_storage_bytes(c10::IntArrayRef sizes, c10::IntArrayRef strides,
                                int64_t storage_offset, size_t itemsize) {
  if (sizes.size() != strides.size()) {
    throw std::invalid_argument("a tensor has " + std::to_string(sizes.size()) + " sizes but " +
                                std::to_string(strides.size()) + " strides");
  }
  if (storage_offset < 0) {
    throw std::invalid_argument("a tensor has a negative storage offset (" +
                                std::to_string(storage_offset) + ")");
  }
  bool empty = false;
  for (size_t d = 0; d < sizes.size(); ++d) {
    if (sizes[d] < 0 || strides[d] < 0) {
      throw std::invalid_argument("a tensor has a negative size or stride (" +
                                  std::to_string(sizes[d]) + ", " + std::to_string(strides[d]) +
                                  " in dimension " + std::to_string(d) + ")");
    }
    if (sizes[d] == 0) empty = true;
  }
  if (empty) return 0;
  // One past the last element's index, starting from the offset.
  uint64_t end = 1;
  for (size_t d = 0; d < sizes.size(); ++d) {
    uint64_t span = 0;
    if (__builtin_mul_overflow(static_cast<uint64_t>(sizes[d] - 1),
                               static_cast<uint64_t>(strides[d]), &span) ||
        __builtin_add_overflow(end, span, &end)) {
      throw std::invalid_argument("a tensor's geometry spans more than 2^64 elements");
    }
  }
  uint64_t bytes = 0;
  if (__builtin_add_overflow(end, static_cast<uint64_t>(storage_offset), &end) ||
      __builtin_mul_overflow(end, static_cast<uint64_t>(itemsize), &bytes)) {
    throw std::invalid_argument("a tensor's geometry spans more than 2^64 bytes");
  }
  return bytes;
}

c10::ScalarType ref_dtype(int32_t dtype) {
  const auto type = static_cast<c10::ScalarType>(dtype);
  if (dtype < 0 || dtype >= static_cast<int32_t>(c10::ScalarType::NumOptions) ||
      type == c10::ScalarType::Undefined || c10::isQIntType(type)) {
    throw std::invalid_argument("dtype " + std::to_string(dtype) +
                                " is not an element type the wire carries");
  }
  return type;
}

uint64_t required_storage_bytes(const wire::TensorRef& ref) {
  return required_storage_bytes(c10::IntArrayRef(ref.sizes().data(), ref.sizes_size()),
                                c10::IntArrayRef(ref.strides().data(), ref.strides_size()),
                                ref.storage_offset(), c10::elementSize(ref_dtype(ref.dtype())));
}

void write_tensor_ref(const at::Tensor& tensor, uint64_t storage_id, int slot,
                      wire::TensorRef* ref) {
  ref->set_storage_id(storage_id);
  ref->set_storage_nbytes(tensor.storage().nbytes());
  ref->mutable_sizes()->Add(tensor.sizes().begin(), tensor.sizes().end());
  ref->mutable_strides()->Add(tensor.strides().begin(), tensor.strides().end());
  ref->set_storage_offset(tensor.storage_offset());
  ref->set_dtype(static_cast<int32_t>(tensor.scalar_type()));
  ref->set_device(slot);
  if (tensor.is_conj()) ref->set_conj(true);
  if (tensor.is_neg()) ref->set_neg(true);
}

wire::TensorRef contiguous_ref(uint64_t storage_id, c10::IntArrayRef sizes, c10::ScalarType dtype,
                               int slot) {
  const auto strides = c10::contiguous_strides(sizes);
  wire::TensorRef ref;
  ref.set_storage_id(storage_id);
  ref.set_storage_nbytes(required_storage_bytes(sizes, strides, 0, c10::elementSize(dtype)));
  ref.mutable_sizes()->Add(sizes.begin(), sizes.end());
  ref.mutable_strides()->Add(strides.begin(), strides.end());
  ref.set_dtype(static_cast<int32_t>(dtype));
  ref.set_device(slot);
  return ref;
}

}  // namespace mycelya
