// SPDX-License-Identifier: AGPL-3.0-or-later
//
// What an op schema's argument types mean for the wire, for both sides: the
// client encodes a Generator argument for every random op, and the executor
// refuses one that arrives empty.
#pragma once

#include <ATen/core/jit_type.h>

namespace mycelya {

// Whether an argument of this type is a Generator (or an optional one).
inline bool is_generator_type(const c10::TypePtr& type) {
  if (type->kind() == c10::TypeKind::OptionalType) {
    return type->expectRef<c10::OptionalType>().getElementType()->kind() ==
           c10::TypeKind::GeneratorType;
  }
  return type->kind() == c10::TypeKind::GeneratorType;
}

}  // namespace mycelya
