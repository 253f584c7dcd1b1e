// SPDX-License-Identifier: AGPL-3.0-or-later
//
// Bulk bytes between the client and the session's storages: uploads, which
// write a view whole from a payload; downloads, which send the bytes a view
// shows; and resizes, which grow or shrink a storage in place of the client's.
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>

#include <algorithm>
#include <string>

#include "server/error_text.h"
#include "server/executor.h"

namespace mycelya {

void Executor::write_upload(const wire::Upload& upload, PayloadSource& payloads) {
  // A target that fails here leaves its payload unread; the source skips it.
  const uint64_t id = upload.target().storage_id();
  const bool created = !storages_.contains(id);
  at::Tensor target = tensor_to_overwrite(upload.target());
  const size_t nbytes = static_cast<size_t>(target.numel()) * target.element_size();
  try {
    if (target.is_cpu() && target.is_contiguous()) {
      // The bytes land in the storage itself.
      payloads.read(upload.payload_index(), static_cast<char*>(target.data_ptr()), nbytes);
    } else {
      at::Tensor staging =
          at::empty(target.sizes(), at::TensorOptions().dtype(target.scalar_type()));
      payloads.read(upload.payload_index(), static_cast<char*>(staging.data_ptr()), nbytes);
      target.copy_(staging);
    }
  } catch (const std::exception& e) {
    // Part of the bytes may have landed, or none on a storage made unzeroed
    // for them: the tensor cannot be read, and a new storage goes.
    if (created) storages_.free(id);
    storages_.poison(id, std::string("the upload that should have written this tensor failed: ") +
                             error_text(e));
    throw;
  }
  // A storage written whole from the client is valid again.
  if (nbytes == target.storage().nbytes()) storages_.unpoison(id);
}

void Executor::resize(const wire::ResizeStorage& resize) {
  const c10::Storage* kept = storages_.find(resize.storage_id());
  if (!kept) return;  // not created yet: later refs carry the new size
  const c10::Device device = device_for(resize.device());
  const c10::Storage& old_storage = *kept;
  TORCH_CHECK(old_storage.device() == device, "storage ", resize.storage_id(), " lives on ",
              old_storage.device(), ", not on device slot ", resize.device());
  const uint64_t old_nbytes = old_storage.nbytes();
  // The old storage is still counted: only growth needs room.
  storages_.reserve(resize.nbytes() > old_nbytes ? resize.nbytes() - old_nbytes : 0, 0);
  c10::DeviceGuard guard(device);
  c10::Storage grown(c10::Storage::use_byte_size_t(), resize.nbytes(),
                     c10::GetAllocator(device.type()), /*resizable=*/true);
  const uint64_t keep_bytes = std::min<uint64_t>(resize.nbytes(), old_nbytes);
  if (keep_bytes > 0) {
    storage_bytes(grown, 0, keep_bytes).copy_(storage_bytes(old_storage, 0, keep_bytes));
  }
  zero_bytes(grown, keep_bytes);
  storages_.keep(resize.storage_id(), std::move(grown));
}

void Executor::download(const wire::TensorRef& ref, Payload* payload) {
  storages_.check_not_poisoned(ref.storage_id());
  // A view can show a storage's bytes many times over (stride 0): what it
  // would take to send more than the storage holds must fit in memory first.
  const at::Tensor source = tensor_for(ref);
  uint64_t payload_bytes = source.element_size();
  for (int64_t size : source.sizes()) {
    if (__builtin_mul_overflow(payload_bytes, static_cast<uint64_t>(size), &payload_bytes)) {
      payload_bytes = UINT64_MAX;
      break;
    }
  }
  if (payload_bytes > source.storage().nbytes()) storages_.reserve(payload_bytes, 0);
  // A contiguous CPU view is sent as it is; the tensor keeps its storage alive.
  // The bytes of the values the tensor shows: lazy conjugate/negative bits applied.
  payload->bytes = source.resolve_conj().resolve_neg().contiguous().cpu();
  // A tensor without memory (a ZeroTensor some kernel returned) has no bytes to send.
  TORCH_CHECK(payload->bytes.numel() == 0 || payload->bytes.const_data_ptr() != nullptr, "storage ",
              ref.storage_id(), " has no memory on the remote machine");
}

}  // namespace mycelya
