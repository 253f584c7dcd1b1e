// SPDX-License-Identifier: AGPL-3.0-or-later
//
// Copies between the CPU and a machine, within one machine, and .item().
// Uploads are queued like ops (the bytes are copied once, so the source may
// change right after); downloads are sync points. Only the bytes a view
// covers travel, as the contiguous image of the view.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "core/allocator.h"
#include "core/machine.h"
#include "core/op_encoding.h"
#include "core/payload_pool.h"
#include "core/registration.h"
#include "core/remote_tensor.h"
#include "core/transfer_progress.h"
#include "proto/tensor_geometry.h"

namespace mycelya {
namespace {

std::string format_mib(uint64_t nbytes) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.1f MiB", static_cast<double>(nbytes) / (1 << 20));
  return text;
}

// Bytes [start, end) of a contiguous tensor's image, as a byte view of its storage.
wire::TensorRef byte_range(const at::Tensor& tensor, int slot, uint64_t start, uint64_t end) {
  wire::TensorRef ref;
  ref.set_storage_id(storage_id(tensor.storage()));
  ref.set_storage_nbytes(tensor.storage().nbytes());
  ref.add_sizes(static_cast<int64_t>(end - start));
  ref.add_strides(1);
  ref.set_storage_offset(tensor.storage_offset() * static_cast<int64_t>(tensor.element_size()) +
                         static_cast<int64_t>(start));
  ref.set_dtype(static_cast<int32_t>(c10::ScalarType::Byte));
  ref.set_device(slot);
  return ref;
}

void download_into(const DeviceRef& device, const wire::TensorRef& source, std::string* bytes) {
  wire::Request request;
  *request.mutable_download()->mutable_source() = source;
  device->machine->request(std::move(request), bytes, device.get());
}

// The contiguous image of a mycelya tensor, as a CPU tensor.
at::Tensor download(const at::Tensor& source) {
  const DeviceRef& device = device_entry(source);
  const size_t expected = static_cast<size_t>(source.numel()) * source.element_size();
  // Received into a pooled buffer, which goes back to the pool with the tensor.
  auto bytes = std::make_unique<std::string>(payload_pool().acquire(expected));
  ProgressReporter report =
      source.is_contiguous() ? progress_reporter_for(expected) : ProgressReporter();
  if (report) {
    const std::string label = "download of " + format_mib(expected) + " from " +
                              device->machine->id() + " " + device->remote_name;
    report(label, 0, expected);
    const uint64_t piece = std::max<uint64_t>(
        kUploadPieceBytes, (expected + kMaxDownloadPieces - 1) / kMaxDownloadPieces);
    std::string received;
    for (const auto& [start, end] : transfer_pieces(expected, piece)) {
      download_into(device, byte_range(source, device->slot, start, end), &received);
      TORCH_CHECK(received.size() == end - start, "mycelya: a download returned ", received.size(),
                  " bytes, expected ", end - start);
      std::memcpy(bytes->data() + start, received.data(), received.size());
      report(label, end, expected);
    }
  } else {
    wire::TensorRef ref;
    write_tensor_ref(source, storage_id(source.storage()), device->slot, &ref);
    download_into(device, ref, bytes.get());
  }
  TORCH_CHECK(bytes->size() == expected, "mycelya: download of ", source.sizes(), " returned ",
              bytes->size(), " bytes, expected ", expected);
  // The received bytes become the tensor's memory: no copy.
  char* data = bytes->data();
  return at::from_blob(
      data, source.sizes(),
      [owner = bytes.release()](void*) {
        payload_pool().release(std::move(*owner));
        delete owner;
      },
      source.options().device(c10::kCPU));
}

void upload(const at::Tensor& host, const at::Tensor& target) {
  const DeviceRef& device = device_entry(target);
  at::Tensor image = host.to(target.scalar_type()).expand(target.sizes()).contiguous();
  const uint64_t nbytes = image.nbytes();
  const char* image_bytes = static_cast<const char*>(image.const_data_ptr());
  ProgressReporter report =
      target.is_contiguous() ? progress_reporter_for(nbytes) : ProgressReporter();
  if (!report) {
    wire::Upload upload;
    write_tensor_ref(target, storage_id(target.storage()), device->slot, upload.mutable_target());
    std::string payload = payload_pool().acquire(nbytes);
    if (nbytes > 0) std::memcpy(payload.data(), image_bytes, nbytes);
    device->machine->enqueue_upload(std::move(upload), std::move(payload), device.get());
    return;
  }
  const std::string label = "upload of " + format_mib(nbytes) + " to " + device->machine->id() +
                            " " + device->remote_name;
  report(label, 0, nbytes);
  // Each piece waits for room in the queue, so the bar moves with the link.
  for (const auto& [start, end] : transfer_pieces(nbytes, kUploadPieceBytes)) {
    wire::Upload upload;
    *upload.mutable_target() = byte_range(target, device->slot, start, end);
    std::string payload = payload_pool().acquire(end - start);
    std::memcpy(payload.data(), image_bytes + start, end - start);
    device->machine->enqueue_upload(std::move(upload), std::move(payload), device.get());
    report(label, end, nbytes);
  }
}

void copy_on_machine(const at::Tensor& source, const at::Tensor& target) {
  static const auto copy_op = c10::Dispatcher::singleton().findSchemaOrThrow("aten::copy_", "");
  std::vector<c10::IValue> args{target, source, false};
  // Copies may cross devices of one machine (its cuda and its cpu), never machines.
  OpPlacement placement;
  placement.add(device_entry(target));
  check_same_machine(*placement.entry, *device_entry(source));
  wire::Command command;
  *command.mutable_op() = encode_op(copy_op, args, placement);
  command.mutable_op()->add_outputs();  // copy_ returns its target: nothing new

  placement.entry->machine->enqueue(std::move(command), placement.entry.get());
}

at::Tensor copy_from(const at::Tensor& self, const at::Tensor& dst, bool /*non_blocking*/) {
  if (self.numel() == 0 && dst.numel() == 0) return dst;
  if (self.is_privateuseone() && dst.is_privateuseone()) {
    copy_on_machine(self, dst);
  } else if (self.is_privateuseone()) {
    TORCH_CHECK(dst.is_cpu(), "mycelya can copy only to the CPU or another mycelya tensor, not ",
                dst.device());
    dst.copy_(download(self));
  } else {
    TORCH_CHECK(self.is_cpu(), "mycelya can copy only from the CPU or another mycelya tensor, not ",
                self.device());
    upload(self, dst);
  }
  return dst;
}

at::Tensor copy_from_and_resize(const at::Tensor& self, const at::Tensor& dst) {
  dst.resize_(self.sizes());
  return copy_from(self, dst, false);
}

// The values a tensor shows, without conjugate or negative bits (lazy flags
// on the TensorImpl, which the wire does not carry). Not resolve_conj(): on a
// mycelya tensor that copies through _copy_from, which is what asked.
at::Tensor without_lazy_bits(at::Tensor t) {
  if (t.is_conj()) t = at::conj_physical(t.conj());
  if (t.is_neg()) t = at::neg(t._neg_view());
  return t;
}

// _copy_from under the Conjugate and Negative keys. PyTorch's generic
// fallback for those keys materializes the source with clone(), which copies
// through _copy_from again on a backend like this one, forever. Resolve the
// bits here instead: the source's into values, the destination's by writing
// the inverse transform into its plain base.
at::Tensor copy_from_resolving_lazy_bits(const at::Tensor& self, const at::Tensor& dst,
                                         bool non_blocking) {
  at::Tensor source = without_lazy_bits(self);
  at::Tensor target = dst;
  if (target.is_conj()) {
    source = at::conj_physical(source);
    target = target.conj();
  }
  if (target.is_neg()) {
    source = at::neg(source);
    target = target._neg_view();
  }
  at::_copy_from(source, target, non_blocking);
  return dst;
}

c10::Scalar local_scalar_dense(const at::Tensor& self) {
  return at::_local_scalar_dense(download(self));
}

}  // namespace

void register_copy_kernels(torch::Library& m) {
  m.impl("_copy_from", TORCH_FN(copy_from));
  m.impl("_copy_from_and_resize", TORCH_FN(copy_from_and_resize));
  m.impl("_local_scalar_dense", TORCH_FN(local_scalar_dense));
}

// Only backends without a TensorIterator copy (this one) reach _copy_from.
void register_lazy_bit_copies(torch::Library& m) {
  m.impl("_copy_from", TORCH_FN(copy_from_resolving_lazy_bits));
}

}  // namespace mycelya
