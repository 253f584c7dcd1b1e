// SPDX-License-Identifier: AGPL-3.0-or-later
//
// Kernels answered on the client alone: allocation and everything that only
// changes a tensor's view of its storage. None of them sends anything; a
// remote op always carries the full view of each tensor it touches.
#include <ATen/EmptyTensor.h>
#include <ATen/native/Resize.h>
#include <ATen/ops/_reshape_alias_native.h>
#include <ATen/ops/as_strided_native.h>
#include <ATen/ops/view_native.h>
#include <c10/core/Contiguity.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/MemoryFormat.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/library.h>

#include "core/allocator.h"
#include "core/registration.h"
#include "core/remote_tensor.h"
#include "proto/tensor_geometry.h"

namespace mycelya {
namespace {

constexpr auto kKeySet = c10::DispatchKeySet(c10::DispatchKey::PrivateUse1);

std::vector<int64_t> row_major_strides(c10::IntArrayRef size) {
  auto strides = c10::contiguous_strides(size);
  return {strides.begin(), strides.end()};
}

c10::Device target_device(std::optional<c10::Device> device) {
  if (device && device->has_index()) return *device;
  return c10::impl::getDeviceGuardImpl(c10::DeviceType::PrivateUse1)->getDevice();
}

at::Tensor empty_memory_format(c10::IntArrayRef size, std::optional<c10::ScalarType> dtype,
                               std::optional<c10::Layout> layout, std::optional<c10::Device> device,
                               std::optional<bool> pin_memory,
                               std::optional<c10::MemoryFormat> memory_format) {
  TORCH_CHECK(!layout || *layout == c10::Layout::Strided,
              "mycelya supports only strided tensors, not ", *layout);
  c10::DeviceGuard guard(target_device(device));
  return at::detail::empty_generic(size, remote_allocator(), kKeySet, c10::dtype_or_default(dtype),
                                   memory_format);
}

at::Tensor empty_strided(c10::IntArrayRef size, c10::IntArrayRef stride,
                         std::optional<c10::ScalarType> dtype, std::optional<c10::Layout> layout,
                         std::optional<c10::Device> device, std::optional<bool> pin_memory) {
  TORCH_CHECK(!layout || *layout == c10::Layout::Strided,
              "mycelya supports only strided tensors, not ", *layout);
  c10::DeviceGuard guard(target_device(device));
  return at::detail::empty_strided_generic(size, stride, remote_allocator(), kKeySet,
                                           c10::dtype_or_default(dtype));
}

// Autograd returns "efficient zero tensors" (no memory, a ZeroTensor key) for
// gradients known to be zero. The wire has no such tensors: make real zeros,
// which every op reads correctly.
at::Tensor efficient_zero_tensor(c10::IntArrayRef size, std::optional<c10::ScalarType> dtype,
                                 std::optional<c10::Layout> layout,
                                 std::optional<c10::Device> device,
                                 std::optional<bool> pin_memory) {
  return at::zeros(size, at::TensorOptions()
                             .dtype(c10::dtype_or_default(dtype))
                             .device(target_device(device))
                             .layout(layout)
                             .pinned_memory(pin_memory));
}

at::Tensor as_strided(const at::Tensor& self, c10::IntArrayRef size, c10::IntArrayRef stride,
                      std::optional<int64_t> storage_offset) {
  return at::native::as_strided_tensorimpl(self, size, stride, storage_offset);
}

at::Tensor view(const at::Tensor& self, c10::IntArrayRef size) {
  return at::native::view(self, size);
}

at::Tensor reshape_alias(const at::Tensor& self, c10::IntArrayRef size, c10::IntArrayRef stride) {
  return at::native::_reshape_alias(self, size, stride);
}

// Grows the storage (remotely too) when the new geometry needs more bytes;
// keeps the storage offset, as PyTorch's own resize_ does.
void set_geometry(const at::Tensor& self, c10::IntArrayRef size, c10::IntArrayRef stride,
                  int64_t storage_offset) {
  const size_t needed = required_storage_bytes(size, stride, storage_offset, self.itemsize());
  if (needed > self.storage().nbytes()) resize_remote_storage(self, needed);
  self.unsafeGetTensorImpl()->set_sizes_and_strides(size, stride, storage_offset);
}

const at::Tensor& resize_(const at::Tensor& self, c10::IntArrayRef size,
                          std::optional<c10::MemoryFormat> memory_format) {
  // As PyTorch's own: the same sizes and no format asked for keep the
  // strides (an out= argument of the right shape keeps its layout).
  if (!memory_format && self.sizes() == size) return self;
  const auto format = memory_format.value_or(c10::MemoryFormat::Contiguous);
  TORCH_CHECK(format != c10::MemoryFormat::Preserve, "resize_: Preserve is not a valid format");
  std::vector<int64_t> strides;
  if (format == c10::MemoryFormat::ChannelsLast) {
    strides = c10::get_channels_last_strides_2d(size);
  } else if (format == c10::MemoryFormat::ChannelsLast3d) {
    strides = c10::get_channels_last_strides_3d(size);
  } else {
    strides = row_major_strides(size);
  }
  set_geometry(self, size, strides, self.storage_offset());
  return self;
}

void check_storage(const c10::Storage& storage) {
  TORCH_CHECK(storage.device_type() == c10::DeviceType::PrivateUse1,
              "set_: a mycelya tensor cannot take a storage on ", storage.device());
}

at::Tensor& set_storage_offset(at::Tensor& self, c10::Storage source, int64_t storage_offset,
                               c10::IntArrayRef size, c10::IntArrayRef stride) {
  check_storage(source);
  self.unsafeGetTensorImpl()->set_storage_keep_dtype(std::move(source));
  std::vector<int64_t> strides = stride.empty() ? row_major_strides(size) : stride.vec();
  set_geometry(self, size, strides, storage_offset);
  return self;
}

at::Tensor& set_storage(at::Tensor& self, c10::Storage source) {
  const int64_t numel = static_cast<int64_t>(source.nbytes() / self.itemsize());
  return set_storage_offset(self, std::move(source), 0, {numel}, {1});
}

at::Tensor& set_tensor(at::Tensor& self, const at::Tensor& source) {
  if (self.unsafeGetTensorImpl() == source.unsafeGetTensorImpl()) return self;
  return set_storage_offset(self, source.storage(), source.storage_offset(), source.sizes(),
                            source.strides());
}

at::Tensor& set_empty(at::Tensor& self) {
  device_entry(self);  // a tensor of a stopped machine takes no storage of its index's new owner
  c10::DeviceGuard guard(self.device());
  c10::Storage empty(c10::Storage::use_byte_size_t(), 0, remote_allocator(), /*resizable=*/true);
  return set_storage_offset(self, std::move(empty), 0, {0}, {});
}

// Whether `from`'s data may replace `self`'s (`self.data = from`). PyTorch
// allows it between dense tensors of the backends it lists, which leave out
// PrivateUse1; a CPU tensor and a mycelya one are both plain TensorImpls that
// differ only in keys and storage, so allow it between them as between CPU
// and CUDA. Module.to() relies on it to keep each parameter object as it
// moves it: weights tied across modules stay tied, a lazy module's
// UninitializedParameter stays uninitialized, and an optimizer made before
// .to() still holds the module's parameters.
bool has_compatible_shallow_copy_type(const at::Tensor& self, const at::Tensor& from) {
  const auto plain = [](const at::Tensor& t) {
    return t.layout() == c10::kStrided && (t.is_cpu() || t.is_privateuseone()) &&
           t.key_set().has(c10::DispatchKey::Dense);
  };
  if (plain(self) && plain(from)) return true;
  return self.unsafeGetTensorImpl()->has_compatible_shallow_copy_type(from.key_set());
}

}  // namespace

void register_tensor_kernels(torch::Library& m) {
  m.impl("_has_compatible_shallow_copy_type", TORCH_FN(has_compatible_shallow_copy_type));
  m.impl("empty.memory_format", TORCH_FN(empty_memory_format));
  m.impl("empty_strided", TORCH_FN(empty_strided));
  m.impl("_efficientzerotensor", TORCH_FN(efficient_zero_tensor));
  m.impl("as_strided", TORCH_FN(as_strided));
  m.impl("view", TORCH_FN(view));
  m.impl("_reshape_alias", TORCH_FN(reshape_alias));
  m.impl("resize_", TORCH_FN(resize_));
  m.impl("set_.source_Storage", TORCH_FN(set_storage));
  m.impl("set_.source_Storage_storage_offset", TORCH_FN(set_storage_offset));
  m.impl("set_.source_Tensor", TORCH_FN(set_tensor));
  m.impl("set_", TORCH_FN(set_empty));
}

}  // namespace mycelya
