// SPDX-License-Identifier: AGPL-3.0-or-later
//
// Tensor geometry on both sides of the wire: the bytes a view needs, a
// tensor written as a TensorRef, and the dtype a TensorRef names. The
// client plans and writes its tensor refs with these and the executor checks
// every TensorRef it receives with them, so the two never disagree on how
// big a view is. Strides of a contiguous tensor are c10::contiguous_strides.
#pragma once

#include <ATen/Tensor.h>
#include <c10/core/ScalarType.h>
#include <c10/util/ArrayRef.h>

#include <cstdint>

#include "proto/mycelya.pb.h"

namespace mycelya {

// Bytes a view needs from the start of its storage, by PyTorch's rule
// (at::detail::computeStorageNbytes): 0 when any size is 0, else
// (storage_offset + 1 + sum((size - 1) * stride)) * itemsize. Throws
// std::invalid_argument for sizes and strides of different lengths, a
// negative size, stride or offset, or a result beyond 64 bits.
uint64_t required_storage_bytes(c10::IntArrayRef sizes, c10::IntArrayRef strides,
                                int64_t storage_offset, size_t itemsize);

// The same for a TensorRef, whose dtype is checked too (ref_dtype).
uint64_t required_storage_bytes(const wire::TensorRef& ref);

// The element type a TensorRef names. Throws std::invalid_argument for a
// number that is not a dense element type (out of range, Undefined, a
// quantized type).
c10::ScalarType ref_dtype(int32_t dtype);

// Describes `tensor` as a view of storage `storage_id` on the machine's
// device slot `slot`, lazy conjugate and negative bits included.
void write_tensor_ref(const at::Tensor& tensor, uint64_t storage_id, int slot,
                      wire::TensorRef* ref);

// A contiguous tensor that fills its whole storage (tests and benchmarks
// speak the wire protocol with these).
wire::TensorRef contiguous_ref(uint64_t storage_id, c10::IntArrayRef sizes,
                               c10::ScalarType dtype = c10::ScalarType::Float, int slot = 0);

}  // namespace mycelya
