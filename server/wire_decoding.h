// SPDX-License-Identifier: AGPL-3.0-or-later
//
// What the executor reads off a TensorRef, shared by wire decoding
// (server/wire_decoding.cpp) and the checks of an op's planned outputs.
#pragma once

#include <c10/util/ArrayRef.h>

#include "proto/mycelya.pb.h"

namespace mycelya {

inline c10::IntArrayRef ref_sizes(const wire::TensorRef& ref) {
  return c10::IntArrayRef(ref.sizes().data(), ref.sizes_size());
}

inline c10::IntArrayRef ref_strides(const wire::TensorRef& ref) {
  return c10::IntArrayRef(ref.strides().data(), ref.strides_size());
}

}  // namespace mycelya
