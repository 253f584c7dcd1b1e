// SPDX-License-Identifier: AGPL-3.0-or-later
//
// The executor's side of Python functions (wire::Call). A call runs in
// stream order like an op, on views of the session's storages; what it
// returned waits under its ID until the client takes it. A tensor it returned
// is named by the storage ID of the argument it views, or, when it is new
// memory, by a number the client replaces with an ID of its own
// (AdoptCallStorages), since IDs are the client's to give.
#include <ATen/ATen.h>

#include <unordered_map>
#include <unordered_set>

#include "proto/tensor_geometry.h"
#include "server/error_text.h"
#include "server/executor.h"

namespace mycelya {

namespace {

// Results one session may leave untaken (the client takes each at once; a
// bound keeps a client that does not from growing the server without end).
constexpr size_t kMaxFinishedCalls = 1024;

}  // namespace

int Executor::returned_slot(const FinishedCall& call, c10::Device device) const {
  // Where two slots share a device (the mock's emulated GPUs are CPU
  // memory), an argument's slot keeps a result beside its inputs.
  for (int slot : call.argument_slots) {
    if (device_for(slot) == device) return slot;
  }
  for (size_t slot = 0; slot < options_.devices.size(); ++slot) {
    if (options_.devices[slot] == device) return static_cast<int>(slot);
  }
  TORCH_CHECK(false, "the function returned a tensor on ", device,
              ", which is not a device of this session; move it to one first");
}

void Executor::run_call(const wire::Call& call) {
  TORCH_CHECK(call.call_id() > last_call_id_, "call ", call.call_id(),
              " is not numbered after the session's last call, ", last_call_id_);
  TORCH_CHECK(finished_calls_.size() < kMaxFinishedCalls, "this session has ",
              finished_calls_.size(), " call results nobody took");
  last_call_id_ = call.call_id();
  FinishedCall& finished = finished_calls_[call.call_id()];
  try {
    TORCH_CHECK(options_.calls, options_.no_calls_reason);
    std::vector<at::Tensor> tensors;
    tensors.reserve(call.tensors_size());
    for (const wire::TensorRef& ref : call.tensors()) {
      storages_.check_not_poisoned(ref.storage_id());
      tensors.push_back(tensor_for(ref));
      finished.argument_ids.push_back(ref.storage_id());
      finished.argument_slots.push_back(ref.device());
    }
    finished.outcome = options_.calls->run(call.function(), std::move(tensors));
  } catch (const PoisonedStorage& e) {
    finished.error = std::string("a tensor passed to the function is invalid: ") + e.what();
  } catch (const std::exception& e) {
    finished.error = error_text(e);
  }
  // The function may have grown an argument's storage (resize_).
  storages_.recharge(finished.argument_ids);
}

void Executor::take_finished_call(uint64_t call_id, wire::CallResult* result) {
  auto it = finished_calls_.find(call_id);
  TORCH_CHECK(it != finished_calls_.end(), "no result of call ", call_id, " waits in this session");
  FinishedCall finished = std::move(it->second);
  finished_calls_.erase(it);
  TORCH_CHECK(finished.error.empty(), finished.error);
  TORCH_CHECK(awaiting_adoption_.size() < kMaxFinishedCalls, "this session has ",
              awaiting_adoption_.size(), " call results whose new storages were never adopted");

  // Storages the result may name by ID: the arguments'. Any other storage
  // the session holds comes back as a copy, so one storage keeps one ID.
  std::unordered_map<const c10::StorageImpl*, uint64_t> argument_storages;
  for (uint64_t id : finished.argument_ids) {
    if (const c10::Storage* kept = storages_.find(id)) {
      argument_storages.emplace(kept->unsafeGetStorageImpl(), id);
    }
  }
  // Built at the first result that needs it: a scan of every storage.
  std::unordered_set<const c10::StorageImpl*> session_storages;
  bool scanned = false;
  std::unordered_map<const c10::StorageImpl*, uint32_t> new_storages;
  std::vector<c10::Storage> adopted;
  for (at::Tensor tensor : finished.outcome.tensors) {
    TORCH_CHECK(tensor.layout() == at::kStrided && !tensor.is_quantized(),
                "the function returned a ", tensor.layout(),
                " tensor; only dense tensors come back from a machine");
    const int slot = returned_slot(finished, tensor.device());
    const c10::StorageImpl* impl = tensor.storage().unsafeGetStorageImpl();
    wire::CallTensor* out = result->add_tensors();
    auto argument = argument_storages.find(impl);
    if (argument != argument_storages.end()) {
      write_tensor_ref(tensor, argument->second, slot, out->mutable_ref());
      continue;
    }
    if (!scanned) {
      for (const c10::StorageImpl* kept : storages_.storage_impls()) session_storages.insert(kept);
      scanned = true;
    }
    if (session_storages.count(impl)) {
      tensor = tensor.clone();
      impl = tensor.storage().unsafeGetStorageImpl();
    }
    auto inserted = new_storages.emplace(impl, static_cast<uint32_t>(new_storages.size() + 1));
    if (inserted.second) adopted.push_back(tensor.storage());
    write_tensor_ref(tensor, 0, slot, out->mutable_ref());
    out->mutable_ref()->set_storage_nbytes(tensor.storage().nbytes());
    out->set_new_storage(inserted.first->second);
  }
  result->set_value(std::move(finished.outcome.value));
  result->set_raised(finished.outcome.raised);
  result->set_new_storages(static_cast<uint32_t>(adopted.size()));
  if (!adopted.empty()) awaiting_adoption_[call_id] = std::move(adopted);
}

void Executor::adopt_call_storages(const wire::AdoptCallStorages& adopt) {
  auto it = awaiting_adoption_.find(adopt.call_id());
  TORCH_CHECK(it != awaiting_adoption_.end(), "call ", adopt.call_id(),
              " has no new storages waiting for IDs");
  std::vector<c10::Storage> storages = std::move(it->second);
  awaiting_adoption_.erase(it);
  TORCH_CHECK(static_cast<size_t>(adopt.storage_ids_size()) == storages.size(), "call ",
              adopt.call_id(), " made ", storages.size(), " new storages, not ",
              adopt.storage_ids_size());
  std::unordered_set<uint64_t> seen;
  for (uint64_t id : adopt.storage_ids()) {
    TORCH_CHECK(
        id != 0 && !storages_.contains(id) && !storages_.is_poisoned(id) && seen.insert(id).second,
        "storage ID ", id, " is already in use");
  }
  for (size_t i = 0; i < storages.size(); ++i) {
    const uint64_t id = adopt.storage_ids(static_cast<int>(i));
    try {
      storages_.keep(id, std::move(storages[i]));
    } catch (const std::exception& e) {
      // Never a zeroed stand-in: what could not be kept raises where it is used.
      for (size_t j = i; j < storages.size(); ++j) {
        storages_.poison(adopt.storage_ids(static_cast<int>(j)), error_text(e));
      }
      throw;
    }
  }
}

}  // namespace mycelya
