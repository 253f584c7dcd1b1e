// SPDX-License-Identifier: AGPL-3.0-or-later
#include "core/remote_tensor.h"

#include <c10/core/TensorImpl.h>

#include "core/allocator.h"

namespace mycelya {

DeviceEntry device_entry(const at::Tensor& tensor) {
  return lookup_device(tensor.device().index());
}

void encode_tensor_ref(const at::Tensor& tensor, int slot, wire::TensorRef* ref) {
  const auto& storage = tensor.storage();
  ref->set_storage_id(storage_id(storage));
  ref->set_storage_nbytes(storage.nbytes());
  ref->mutable_sizes()->Add(tensor.sizes().begin(), tensor.sizes().end());
  ref->mutable_strides()->Add(tensor.strides().begin(), tensor.strides().end());
  ref->set_storage_offset(tensor.storage_offset());
  ref->set_dtype(static_cast<int32_t>(tensor.scalar_type()));
  ref->set_device(slot);
  if (tensor.is_conj()) ref->set_conj(true);
  if (tensor.is_neg()) ref->set_neg(true);
}

namespace {

at::Tensor tensor_over(c10::Storage storage, caffe2::TypeMeta dtype, c10::IntArrayRef sizes,
                       c10::IntArrayRef strides, int64_t storage_offset) {
  auto tensor = at::detail::make_tensor<c10::TensorImpl>(
      std::move(storage), c10::DispatchKeySet(c10::DispatchKey::PrivateUse1), dtype);
  tensor.unsafeGetTensorImpl()->set_sizes_and_strides(sizes, strides, storage_offset);
  return tensor;
}

}  // namespace

at::Tensor empty_remote(c10::IntArrayRef sizes, c10::IntArrayRef strides, int64_t storage_offset,
                        caffe2::TypeMeta dtype, c10::DeviceIndex device, size_t storage_nbytes) {
  lookup_device(device);
  c10::Storage storage(c10::Storage::use_byte_size_t(), storage_nbytes,
                       make_storage_data_ptr(next_storage_id(), device), remote_allocator(),
                       /*resizable=*/true);
  return tensor_over(std::move(storage), dtype, sizes, strides, storage_offset);
}

at::Tensor remote_from_ref(const wire::TensorRef& ref, c10::DeviceIndex device) {
  c10::Storage storage(c10::Storage::use_byte_size_t(), ref.storage_nbytes(),
                       make_storage_data_ptr(ref.storage_id(), device), remote_allocator(),
                       /*resizable=*/true);
  std::vector<int64_t> sizes(ref.sizes().begin(), ref.sizes().end());
  std::vector<int64_t> strides(ref.strides().begin(), ref.strides().end());
  return tensor_over(std::move(storage),
                     c10::scalarTypeToTypeMeta(static_cast<c10::ScalarType>(ref.dtype())), sizes,
                     strides, ref.storage_offset());
}

at::Tensor alias_remote(const at::Tensor& base, c10::IntArrayRef sizes, c10::IntArrayRef strides,
                        int64_t storage_offset, caffe2::TypeMeta dtype) {
  auto view = at::detail::make_tensor<c10::TensorImpl>(
      c10::TensorImpl::VIEW, c10::Storage(base.storage()), base.key_set(), dtype);
  view.unsafeGetTensorImpl()->set_sizes_and_strides(sizes, strides, storage_offset);
  return view;
}

void resize_remote_storage(const at::Tensor& tensor, size_t nbytes) {
  auto entry = device_entry(tensor);
  wire::Command command;
  auto* resize = command.mutable_resize();
  resize->set_storage_id(storage_id(tensor.storage()));
  resize->set_nbytes(nbytes);
  resize->set_device(entry.slot);
  entry.machine->enqueue(std::move(command));
  tensor.storage().unsafeGetStorageImpl()->set_nbytes(nbytes);
}

size_t required_storage_bytes(c10::IntArrayRef sizes, c10::IntArrayRef strides,
                              int64_t storage_offset, size_t itemsize) {
  int64_t last = storage_offset;
  for (size_t d = 0; d < sizes.size(); ++d) {
    if (sizes[d] == 0) return static_cast<size_t>(storage_offset) * itemsize;
    last += (sizes[d] - 1) * strides[d];
  }
  return static_cast<size_t>(last + 1) * itemsize;
}

}  // namespace mycelya
