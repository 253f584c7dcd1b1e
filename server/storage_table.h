// SPDX-License-Identifier: AGPL-3.0-or-later
//
// One session's storages by client-assigned ID, and what they cost. The one
// owner of the session's memory accounting (its bytes, their charge against
// the session's limit and the server's MemoryBudget, the storage count) and
// of poisoning: which IDs a failed op or upload left invalid, and with what
// error.
//
// Poisoning rules, all kept here:
// - the first error poisons an ID; a later one never replaces it;
// - freeing an ID forgets its poison (the client reuses no ID, but a freed
//   ID must not keep an error alive);
// - writing a storage whole from the client makes it valid again (unpoison).
#pragma once

#include <ATen/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/Storage.h>

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "server/memory_budget.h"

namespace mycelya {

// Thrown when an op reads or writes a storage that a failed op left invalid.
// It carries that op's error, which was reported already, so it is never
// reported again; it only spreads to what this op would have written.
class PoisonedStorage : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Bytes [from, from + count) of `storage`, as a uint8 tensor over them.
at::Tensor storage_bytes(const c10::Storage& storage, uint64_t from, uint64_t count);
// Sets the bytes of `storage` from byte `from` on to zero.
void zero_bytes(const c10::Storage& storage, uint64_t from);

class StorageTable {
 public:
  // `server_budget` is shared by the server's sessions; null: one of the
  // session's own, as large as `memory_limit_bytes`.
  StorageTable(uint64_t memory_limit_bytes, std::shared_ptr<MemoryBudget> server_budget,
               uint64_t max_storages);
  ~StorageTable();
  StorageTable(const StorageTable&) = delete;
  StorageTable& operator=(const StorageTable&) = delete;

  // The storage kept under `id`, or null. Inline: every tensor argument asks.
  const c10::Storage* find(uint64_t id) const {
    auto it = storages_.find(id);
    return it == storages_.end() ? nullptr : &it->second.storage;
  }
  bool contains(uint64_t id) const { return storages_.count(id) > 0; }
  size_t size() const { return storages_.size(); }

  // Keeps a storage under `id`, charging what it costs beyond what the ID was
  // charged before; throws the out-of-memory error (keeping nothing under the
  // ID) when that is beyond a limit, or when the session holds its most.
  void keep(uint64_t id, c10::Storage storage);
  // Charges storages that a kernel grew in place (out= arguments) anew.
  void recharge(const std::vector<uint64_t>& ids);
  // Drops the storage and the poison under `id`; unknown IDs are ignored.
  void free(uint64_t id);
  // Throws the out-of-memory error unless `nbytes` more, in `storages` new
  // storages, fit in both limits now: the check before allocating.
  void reserve(uint64_t nbytes, uint64_t storages = 1) const;
  // A new storage of `nbytes` on `device`, after reserve(); not kept yet.
  // `zeroed`: its bytes start zero (false only where the caller writes them all).
  c10::Storage allocate(uint64_t nbytes, c10::Device device, bool zeroed) const;

  // Marks `id` invalid with `error`, unless it already is (the first error stays).
  void poison(uint64_t id, const std::string& error);
  void poison(const std::vector<uint64_t>& ids, const std::string& error);
  // `id` was written whole: it is valid again.
  void unpoison(uint64_t id) { poison_.erase(id); }
  bool is_poisoned(uint64_t id) const { return poison_.count(id) > 0; }
  bool any_poisoned() const { return !poison_.empty(); }
  // Throws PoisonedStorage with the error that left `id` invalid, if any.
  void check_not_poisoned(uint64_t id) const;

  // Every ID the table knows, kept or poisoned (a poisoned ID may have no
  // storage: a failed op's output may never have been created), in no order.
  std::vector<uint64_t> known_ids() const;
  // The storage implementations kept, to tell the session's memory from new memory.
  std::vector<const c10::StorageImpl*> storage_impls() const;

  // Bytes of the session's storages, and what they cost against the limits
  // (those bytes plus kStorageOverheadBytes per storage).
  uint64_t bytes_in_use() const { return bytes_in_use_; }
  uint64_t bytes_charged() const { return bytes_charged_; }
  uint64_t memory_limit() const { return memory_limit_; }
  const MemoryBudget& budget() const { return *budget_; }

  // The session's bytes on one device, as torch's allocators count theirs
  // (torch.mycelya.memory_allocated and its peers on a cpu device).
  struct DeviceBytes {
    c10::Device device{c10::kCPU};
    uint64_t in_use = 0;
    uint64_t peak = 0;       // the most in use since the session began or reset_peaks()
    uint64_t allocated = 0;  // every byte ever kept
    uint64_t freed = 0;      // every byte ever dropped
  };
  // The counts for `device` (zeros for a device with no storage yet).
  DeviceBytes device_bytes(c10::Device device) const;
  // Each device's peak starts again from what it holds now.
  void reset_peaks();

 private:
  // Whether `cost` more fits in the session's own limit.
  bool fits_session_limit(uint64_t cost) const;
  // Throws the out-of-memory error for `nbytes` requested at `cost`, naming
  // the session's limit or, when that has room, the server's budget.
  [[noreturn]] void out_of_memory(uint64_t nbytes, uint64_t cost) const;

  struct KeptStorage {
    c10::Storage storage;
    // Bytes counted against the limits, as of keep(). A kernel may resize a
    // storage in place (an out= argument), so storage.nbytes() can differ
    // until recharge() catches up.
    uint64_t counted_bytes = 0;
  };

  const uint64_t memory_limit_;
  const bool shared_budget_;
  const uint64_t max_storages_;
  std::shared_ptr<MemoryBudget> budget_;
  std::unordered_map<uint64_t, KeptStorage> storages_;
  // Storage ID -> the error of the failed op that should have written it.
  std::unordered_map<uint64_t, std::string> poison_;
  uint64_t bytes_in_use_ = 0;
  uint64_t bytes_charged_ = 0;
  // Moves the counts of `device` by `removed` and `added` bytes.
  void count_on_device(c10::Device device, uint64_t removed, uint64_t added);
  std::vector<DeviceBytes> devices_;  // a few: one per device the session used
};

}  // namespace mycelya
