// SPDX-License-Identifier: AGPL-3.0-or-later
#include "core/remote_call.h"

#include <c10/core/TensorImpl.h>

#include <atomic>
#include <stdexcept>
#include <unordered_map>

#include "core/allocator.h"
#include "core/machine.h"
#include "core/remote_tensor.h"
#include "proto/tensor_geometry.h"

namespace mycelya {

namespace {

// Rising across the process, hence within every session, as the server checks.
uint64_t next_call_id() {
  static std::atomic<uint64_t> next{1};
  return next++;
}

at::Tensor view_as_ref(const at::Tensor& base, const wire::TensorRef& ref) {
  std::vector<int64_t> sizes(ref.sizes().begin(), ref.sizes().end());
  std::vector<int64_t> strides(ref.strides().begin(), ref.strides().end());
  return alias_remote(base, sizes, strides, ref.storage_offset(),
                      c10::scalarTypeToTypeMeta(ref_dtype(ref.dtype())));
}

}  // namespace

QueuedCall queue_call(std::string function, std::vector<at::Tensor> tensors,
                      c10::DeviceIndex device_index) {
  QueuedCall call;
  call.device = lookup_device(device_index);
  call.call_id = next_call_id();
  wire::Command command;
  wire::Call* wire_call = command.mutable_call();
  wire_call->set_call_id(call.call_id);
  wire_call->set_function(std::move(function));
  for (const at::Tensor& tensor : tensors) {
    const DeviceRef& entry = device_entry(tensor);
    if (entry->machine != call.device->machine) {
      throw std::invalid_argument(
          "the tensors of one remote call must all be on one machine; these are on different "
          "machines");
    }
    write_tensor_ref(tensor, storage_id(tensor.storage()), entry->slot, wire_call->add_tensors());
  }
  call.tensors = std::move(tensors);
  call.device->machine->enqueue(&command, call.device.get());
  return call;
}

CallResult take_call_result(const QueuedCall& call) {
  Machine& machine = *call.device->machine;
  wire::Request request;
  request.mutable_call_result()->set_call_id(call.call_id);
  wire::Response response = machine.request(std::move(request), nullptr, call.device.get());
  wire::CallResult& result = *response.mutable_call_result();

  std::unordered_map<uint64_t, const at::Tensor*> arguments;
  for (const at::Tensor& tensor : call.tensors) {
    arguments.emplace(storage_id(tensor.storage()), &tensor);
  }
  // One local storage per new remote storage; its first tensor owns it.
  std::vector<at::Tensor> new_storages(result.new_storages());
  std::vector<uint64_t> new_ids;
  CallResult out;
  out.value = std::move(*result.mutable_value());
  out.raised = result.raised();
  for (const wire::CallTensor& returned : result.tensors()) {
    wire::TensorRef ref = returned.ref();
    at::Tensor tensor;
    if (returned.new_storage() == 0) {
      auto argument = arguments.find(ref.storage_id());
      if (argument == arguments.end()) {
        throw std::runtime_error("the machine returned a tensor of storage " +
                                 std::to_string(ref.storage_id()) +
                                 ", which no argument of the call holds");
      }
      tensor = view_as_ref(*argument->second, ref);
    } else {
      if (returned.new_storage() > new_storages.size()) {
        throw std::runtime_error("the machine returned a tensor of a storage it did not list");
      }
      at::Tensor& owner = new_storages[returned.new_storage() - 1];
      if (owner.defined()) {
        tensor = view_as_ref(owner, ref);
      } else {
        ref.set_storage_id(next_storage_id());
        tensor = remote_from_ref(ref, lookup_device(machine.device_index(ref.device())));
        owner = tensor;
      }
    }
    tensor.unsafeGetTensorImpl()->_set_conj(ref.conj());
    tensor.unsafeGetTensorImpl()->_set_neg(ref.neg());
    out.tensors.push_back(std::move(tensor));
  }
  if (!new_storages.empty()) {
    // Before anything can use them: the storages get their IDs in stream order.
    wire::Command adopt;
    adopt.mutable_adopt_call_storages()->set_call_id(call.call_id);
    for (const at::Tensor& owner : new_storages) {
      if (!owner.defined()) throw std::runtime_error("the machine listed a storage no tensor uses");
      adopt.mutable_adopt_call_storages()->add_storage_ids(storage_id(owner.storage()));
    }
    machine.enqueue(&adopt, call.device.get());
  }
  return out;
}

}  // namespace mycelya
