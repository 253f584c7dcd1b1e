// SPDX-License-Identifier: AGPL-3.0-or-later
//
// TensorRefs for the C++ tests and benchmarks, which speak the wire protocol
// directly instead of going through the dispatcher.
#pragma once

#include <c10/core/ScalarType.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "proto/mycelya.pb.h"

namespace mycelya {

inline std::vector<int64_t> contiguous_strides(const std::vector<int64_t>& sizes) {
  std::vector<int64_t> strides(sizes.size());
  int64_t stride = 1;
  for (size_t d = sizes.size(); d-- > 0;) {
    strides[d] = stride;
    stride *= std::max<int64_t>(sizes[d], 1);
  }
  return strides;
}

// A contiguous tensor that fills its whole storage.
inline wire::TensorRef contiguous_ref(uint64_t storage_id, const std::vector<int64_t>& sizes,
                                      c10::ScalarType dtype = c10::ScalarType::Float,
                                      int device = 0) {
  int64_t numel = 1;
  for (int64_t size : sizes) numel *= size;
  wire::TensorRef ref;
  ref.set_storage_id(storage_id);
  ref.set_storage_nbytes(static_cast<uint64_t>(numel) * c10::elementSize(dtype));
  ref.mutable_sizes()->Add(sizes.begin(), sizes.end());
  const std::vector<int64_t> strides = contiguous_strides(sizes);
  ref.mutable_strides()->Add(strides.begin(), strides.end());
  ref.set_dtype(static_cast<int32_t>(dtype));
  ref.set_device(device);
  return ref;
}

// The bytes of a whole storage, as one uint8 tensor.
inline wire::TensorRef byte_ref(uint64_t storage_id, uint64_t nbytes) {
  return contiguous_ref(storage_id, {static_cast<int64_t>(nbytes)}, c10::ScalarType::Byte);
}

}  // namespace mycelya
