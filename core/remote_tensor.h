// SPDX-License-Identifier: AGPL-3.0-or-later
//
// Building and describing mycelya tensors: the one place that knows how a
// local TensorImpl maps to a remote TensorRef.
#pragma once

#include <ATen/Tensor.h>

#include <cstdint>

#include "core/device_table.h"
#include "proto/mycelya.pb.h"

namespace mycelya {

// The device table entry of a mycelya tensor.
DeviceEntry device_entry(const at::Tensor& tensor);

// Describes `tensor` (a mycelya tensor on remote slot `slot`).
void encode_tensor_ref(const at::Tensor& tensor, int slot, wire::TensorRef* ref);

// A new mycelya tensor with its own storage of `storage_nbytes` bytes.
at::Tensor empty_remote(c10::IntArrayRef sizes, c10::IntArrayRef strides, int64_t storage_offset,
                        caffe2::TypeMeta dtype, c10::DeviceIndex device, size_t storage_nbytes);

// A mycelya tensor over an existing storage ID (outputs the remote side made).
at::Tensor remote_from_ref(const wire::TensorRef& ref, c10::DeviceIndex device);

// A view of `base`'s storage with another geometry (and possibly dtype).
at::Tensor alias_remote(const at::Tensor& base, c10::IntArrayRef sizes, c10::IntArrayRef strides,
                        int64_t storage_offset, caffe2::TypeMeta dtype);

// Grows `tensor`'s storage to `nbytes` locally and remotely, keeping its bytes.
void resize_remote_storage(const at::Tensor& tensor, size_t nbytes);

// Bytes a tensor's geometry needs from the start of its storage.
size_t required_storage_bytes(c10::IntArrayRef sizes, c10::IntArrayRef strides,
                              int64_t storage_offset, size_t itemsize);

}  // namespace mycelya
