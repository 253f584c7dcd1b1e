// SPDX-License-Identifier: AGPL-3.0-or-later
//
// Building mycelya tensors: the one place that knows how a local TensorImpl
// maps to a remote storage. Describing one for the wire is
// proto/tensor_geometry.h's write_tensor_ref.
#pragma once

#include <ATen/Tensor.h>

#include <cstdint>

#include "core/device_table.h"
#include "proto/mycelya.pb.h"

namespace mycelya {

// The device entry of a mycelya tensor; throws c10::Error ("... is not
// running") once its machine has stopped since the tensor was made.
const DeviceRef& device_entry(const at::Tensor& tensor);

// A new mycelya tensor with its own storage of `storage_nbytes` bytes.
at::Tensor empty_remote(c10::IntArrayRef sizes, c10::IntArrayRef strides, int64_t storage_offset,
                        caffe2::TypeMeta dtype, const DeviceRef& device, size_t storage_nbytes);

// A mycelya tensor over an existing storage ID (outputs the remote side made).
at::Tensor remote_from_ref(const wire::TensorRef& ref, const DeviceRef& device);

// A view of `base`'s storage with another geometry (and possibly dtype).
at::Tensor alias_remote(const at::Tensor& base, c10::IntArrayRef sizes, c10::IntArrayRef strides,
                        int64_t storage_offset, caffe2::TypeMeta dtype);

// Grows `tensor`'s storage to `nbytes` locally and remotely, keeping its bytes.
void resize_remote_storage(const at::Tensor& tensor, size_t nbytes);

}  // namespace mycelya
