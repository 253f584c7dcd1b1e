// SPDX-License-Identifier: AGPL-3.0-or-later
//
// The commands of one machine session that are not sent yet, already encoded
// as a batch's bytes (proto/batch_framing.h), with their payloads and the
// frees that ride along. It interns op names (the first record that uses a
// name carries it, later ones only its number) and counts commands as the
// machine counts them, remembering for each storage the last command that
// mentions it, which is what an early read waits for (wire::ReadRequest).
//
// Not thread-safe: Machine guards it with its queue lock, and tests drive it
// directly, without threads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/provider.h"
#include "proto/mycelya.pb.h"

namespace mycelya {

class CommandQueue {
 public:
  // Appends a command; an op's name is interned first (which changes *command).
  void append(wire::Command* command);
  // Appends an Upload or SetRngState whose bytes are `payload`, pointing the
  // command at the payload's index in the batch.
  void append_with_payload(wire::Command* command, std::string payload);
  // Frees ride along with the next batch and never make one on their own.
  // They keep their place among the commands: the frees recorded between two
  // commands travel as one Free between them, so the memory of a storage
  // freed before an op is free when the op runs, as on CUDA.
  void free_storage(uint64_t storage_id);
  void free_generator(uint64_t generator_id);
  // Replaces a record's op name by its number, keeping the name on first use
  // (for the ExecuteRequest that carries an op outside any batch).
  void intern(wire::OpRecord* record);

  // Whether commands wait to be sent (frees alone do not count).
  bool has_commands() const { return !commands_.empty(); }
  // Commands and payload bytes waiting, which Machine bounds.
  size_t queued_commands() const { return appended_ - sent_; }
  size_t queued_bytes() const { return commands_.size() + payload_bytes_; }

  // Everything queued as one batch, the frees recorded after its last
  // command last; empty when there is nothing, not even a free, to send.
  EncodedBatch take_batch();

  // Commands appended and taken so far this session, counted from 1 as the
  // machine counts them.
  uint64_t appended() const { return appended_; }
  uint64_t sent() const { return sent_; }
  // The last command that mentions a live storage, or the last Python call,
  // whichever came later (a function may keep a tensor from an earlier call
  // and write it without naming it); 0 when none has.
  uint64_t last_mention(uint64_t storage_id) const;

  // Storages with a last mention, and op names interned: what the queue
  // holds beyond what waits to be sent (for tests of memory).
  size_t mentioned_storages() const { return last_mention_.size(); }
  size_t interned_ops() const { return op_ids_.size(); }

  // Forgets everything: a new session knows no op names and counts from 1.
  void reset();
  // The storage frees not sent yet, taken out of the queue: those waiting
  // for the next command and those already among the commands not sent.
  std::vector<uint64_t> take_storage_frees();

 private:
  void append_encoded(const wire::Command& command);
  // The frees recorded since the last command, as one Free command.
  void append_pending_frees();

  std::string commands_;  // framed Batch.commands entries
  uint64_t last_call_ = 0;
  std::vector<std::string> payloads_;
  size_t payload_bytes_ = 0;
  std::vector<uint64_t> storage_frees_;
  // Storage frees already among commands_, until the batch is taken.
  std::vector<uint64_t> encoded_storage_frees_;
  std::vector<uint64_t> generator_frees_;
  uint64_t appended_ = 0;
  uint64_t sent_ = 0;
  std::unordered_map<uint64_t, uint64_t> last_mention_;
  std::unordered_map<std::string, uint32_t> op_ids_;
};

}  // namespace mycelya
