// SPDX-License-Identifier: AGPL-3.0-or-later
//
// TensorRefs for the C++ tests, which speak the wire protocol directly
// instead of going through the dispatcher. Built on proto/tensor_geometry.h.
#pragma once

#include <cstdint>

#include "proto/mycelya.pb.h"
#include "proto/tensor_geometry.h"

namespace mycelya {

// The bytes of a whole storage, as one uint8 tensor.
inline wire::TensorRef byte_ref(uint64_t storage_id, uint64_t nbytes) {
  return contiguous_ref(storage_id, {static_cast<int64_t>(nbytes)}, c10::ScalarType::Byte);
}

}  // namespace mycelya
