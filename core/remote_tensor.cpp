// SPDX-License-Identifier: AGPL-3.0-or-later
#include "core/remote_tensor.h"

#include <c10/core/TensorImpl.h>

#include "core/allocator.h"
#include "core/machine.h"
#include "proto/tensor_geometry.h"

namespace mycelya {

const DeviceRef& device_entry(const at::Tensor& tensor) { return storage_device(tensor.storage()); }

namespace {

at::Tensor tensor_over(c10::Storage storage, caffe2::TypeMeta dtype, c10::IntArrayRef sizes,
                       c10::IntArrayRef strides, int64_t storage_offset) {
  auto tensor = at::detail::make_tensor<c10::TensorImpl>(
      std::move(storage), c10::DispatchKeySet(c10::DispatchKey::PrivateUse1), dtype);
  tensor.unsafeGetTensorImpl()->set_sizes_and_strides(sizes, strides, storage_offset);
  return tensor;
}

c10::Storage storage_of(uint64_t id, size_t nbytes, const DeviceRef& device) {
  return c10::Storage(c10::Storage::use_byte_size_t(), nbytes, make_storage_data_ptr(id, device),
                      remote_allocator(), /*resizable=*/true);
}

}  // namespace

at::Tensor empty_remote(c10::IntArrayRef sizes, c10::IntArrayRef strides, int64_t storage_offset,
                        caffe2::TypeMeta dtype, const DeviceRef& device, size_t storage_nbytes) {
  return tensor_over(storage_of(next_storage_id(), storage_nbytes, device), dtype, sizes, strides,
                     storage_offset);
}

at::Tensor remote_from_ref(const wire::TensorRef& ref, const DeviceRef& device) {
  std::vector<int64_t> sizes(ref.sizes().begin(), ref.sizes().end());
  std::vector<int64_t> strides(ref.strides().begin(), ref.strides().end());
  return tensor_over(storage_of(ref.storage_id(), ref.storage_nbytes(), device),
                     c10::scalarTypeToTypeMeta(ref_dtype(ref.dtype())), sizes, strides,
                     ref.storage_offset());
}

at::Tensor alias_remote(const at::Tensor& base, c10::IntArrayRef sizes, c10::IntArrayRef strides,
                        int64_t storage_offset, caffe2::TypeMeta dtype) {
  auto view = at::detail::make_tensor<c10::TensorImpl>(
      c10::TensorImpl::VIEW, c10::Storage(base.storage()), base.key_set(), dtype);
  view.unsafeGetTensorImpl()->set_sizes_and_strides(sizes, strides, storage_offset);
  return view;
}

void resize_remote_storage(const at::Tensor& tensor, size_t nbytes) {
  const DeviceRef& device = device_entry(tensor);
  wire::Command command;
  auto* resize = command.mutable_resize();
  resize->set_storage_id(storage_id(tensor.storage()));
  resize->set_nbytes(nbytes);
  resize->set_device(device->slot);
  device->machine->enqueue(std::move(command), device.get());
  tensor.storage().unsafeGetStorageImpl()->set_nbytes(nbytes);
}

}  // namespace mycelya
