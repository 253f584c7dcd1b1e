// SPDX-License-Identifier: AGPL-3.0-or-later
//
// The storage IDs a wire message names, for both sides: the executor poisons
// what a failed op would have written, the client remembers which command
// last mentioned each storage.
#pragma once

#include <cstdint>

#include "proto/mycelya.pb.h"

namespace mycelya {

// Calls `visit(uint64_t)` with the storage ID of every TensorRef inside
// `value`, lists (Tensor[], Tensor?[]) included.
template <typename Visit>
void for_each_storage_id(const wire::Value& value, const Visit& visit) {
  if (value.has_tensor()) visit(value.tensor().storage_id());
  if (value.has_list()) {
    for (const auto& item : value.list().values()) for_each_storage_id(item, visit);
  }
}

}  // namespace mycelya
