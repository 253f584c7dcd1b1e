// SPDX-License-Identifier: AGPL-3.0-or-later
#include "core/command_queue.h"

#include <algorithm>

#include "proto/batch_framing.h"
#include "proto/storage_ids.h"

namespace mycelya {
namespace {

// Calls `visit` with every storage ID a command reads or writes.
template <typename Visit>
void for_each_storage(const wire::Command& command, const Visit& visit) {
  switch (command.kind_case()) {
    case wire::Command::kOp:
      for (const auto& arg : command.op().args()) for_each_storage_id(arg, visit);
      for (const auto& output : command.op().outputs()) {
        if (output.storage_id() != 0) visit(output.storage_id());
      }
      break;
    case wire::Command::kUpload:
      visit(command.upload().target().storage_id());
      break;
    case wire::Command::kResize:
      visit(command.resize().storage_id());
      break;
    case wire::Command::kCall:
      for (const auto& tensor : command.call().tensors()) visit(tensor.storage_id());
      break;
    case wire::Command::kAdoptCallStorages:
      for (uint64_t id : command.adopt_call_storages().storage_ids()) visit(id);
      break;
    default:
      // Frees name dead storages; seeds and generator states name none.
      break;
  }
}

}  // namespace

void CommandQueue::intern(wire::OpRecord* record) {
  if (record->op_name().empty()) return;
  const auto inserted =
      op_ids_.emplace(record->op_name(), static_cast<uint32_t>(op_ids_.size() + 1));
  record->set_op_id(inserted.first->second);
  if (!inserted.second) record->clear_op_name();
}

void CommandQueue::append(wire::Command* command) {
  append_pending_frees();
  if (command->has_op()) intern(command->mutable_op());
  append_encoded(*command);
}

void CommandQueue::append_with_payload(wire::Command* command, std::string payload) {
  append_pending_frees();
  const auto index = static_cast<uint32_t>(payloads_.size());
  if (command->has_upload()) {
    command->mutable_upload()->set_payload_index(index);
  } else {
    command->mutable_set_rng_state()->set_payload_index(index);
  }
  payload_bytes_ += payload.size();
  payloads_.push_back(std::move(payload));
  append_encoded(*command);
}

void CommandQueue::append_encoded(const wire::Command& command) {
  append_framed_command(command, &commands_);
  const uint64_t index = ++appended_;
  for_each_storage(command, [&](uint64_t id) { last_mention_[id] = index; });
  if (command.has_call()) last_call_ = index;
}

void CommandQueue::free_storage(uint64_t storage_id) {
  storage_frees_.push_back(storage_id);
  last_mention_.erase(storage_id);
}

void CommandQueue::free_generator(uint64_t generator_id) {
  generator_frees_.push_back(generator_id);
}

void CommandQueue::append_pending_frees() {
  if (storage_frees_.empty() && generator_frees_.empty()) return;
  wire::Command free;
  free.mutable_free()->mutable_storage_ids()->Add(storage_frees_.begin(), storage_frees_.end());
  free.mutable_free()->mutable_generator_ids()->Add(generator_frees_.begin(),
                                                    generator_frees_.end());
  encoded_storage_frees_.insert(encoded_storage_frees_.end(), storage_frees_.begin(),
                                storage_frees_.end());
  storage_frees_.clear();
  generator_frees_.clear();
  append_encoded(free);
}

EncodedBatch CommandQueue::take_batch() {
  EncodedBatch batch;
  if (commands_.empty() && storage_frees_.empty() && generator_frees_.empty()) return batch;
  append_pending_frees();
  encoded_storage_frees_.clear();
  batch.batch = std::move(commands_);
  commands_.clear();
  batch.payloads = std::move(payloads_);
  payloads_.clear();
  payload_bytes_ = 0;
  sent_ = appended_;
  return batch;
}

uint64_t CommandQueue::last_mention(uint64_t storage_id) const {
  const auto it = last_mention_.find(storage_id);
  return std::max(last_call_, it == last_mention_.end() ? 0 : it->second);
}

std::vector<uint64_t> CommandQueue::take_storage_frees() {
  std::vector<uint64_t> frees = std::move(encoded_storage_frees_);
  frees.insert(frees.end(), storage_frees_.begin(), storage_frees_.end());
  encoded_storage_frees_.clear();
  storage_frees_.clear();
  return frees;
}

void CommandQueue::reset() { *this = CommandQueue(); }

}  // namespace mycelya
