// SPDX-License-Identifier: AGPL-3.0-or-later
#include "server/storage_table.h"

#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdio>
#include <utility>

namespace mycelya {
namespace {

std::string format_bytes(uint64_t n) {
  const char* units[] = {"bytes", "KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(n);
  int unit = 0;
  while (value >= 1024 && unit < 4) {
    value /= 1024;
    ++unit;
  }
  char text[64];
  std::snprintf(text, sizeof(text), unit == 0 ? "%.0f %s" : "%.2f %s", value, units[unit]);
  return text;
}

// What `nbytes` in `storages` storages cost against the limits; saturates.
uint64_t cost_of(uint64_t nbytes, uint64_t storages) {
  uint64_t overhead = 0, cost = 0;
  if (__builtin_mul_overflow(storages, kStorageOverheadBytes, &overhead) ||
      __builtin_add_overflow(nbytes, overhead, &cost)) {
    return UINT64_MAX;
  }
  return cost;
}

}  // namespace

at::Tensor storage_bytes(const c10::Storage& storage, uint64_t from, uint64_t count) {
  at::Tensor bytes = at::empty({0}, at::TensorOptions().dtype(at::kByte).device(storage.device()));
  bytes.set_(storage, static_cast<int64_t>(from), {static_cast<int64_t>(count)}, {1});
  return bytes;
}

void zero_bytes(const c10::Storage& storage, uint64_t from) {
  if (from < storage.nbytes()) storage_bytes(storage, from, storage.nbytes() - from).zero_();
}

StorageTable::StorageTable(uint64_t memory_limit_bytes, std::shared_ptr<MemoryBudget> server_budget,
                           uint64_t max_storages)
    : memory_limit_(memory_limit_bytes),
      shared_budget_(server_budget != nullptr),
      max_storages_(max_storages),
      budget_(server_budget ? std::move(server_budget)
                            : std::make_shared<MemoryBudget>(memory_limit_bytes)) {}

StorageTable::~StorageTable() { budget_->release(bytes_charged_); }

bool StorageTable::fits_session_limit(uint64_t cost) const {
  return cost <= memory_limit_ && bytes_charged_ <= memory_limit_ - cost;
}

void StorageTable::reserve(uint64_t nbytes, uint64_t storages) const {
  const uint64_t cost = cost_of(nbytes, storages);
  if (fits_session_limit(cost) && budget_->fits(cost)) return;
  out_of_memory(nbytes, cost);
}

void StorageTable::out_of_memory(uint64_t nbytes, uint64_t cost) const {
  TORCH_CHECK(fits_session_limit(cost) && shared_budget_,
              "out of memory on the remote machine: ", format_bytes(nbytes), " requested, ",
              format_bytes(bytes_in_use_), " in use, limit ", format_bytes(memory_limit_),
              ". Free tensors you no longer need or use a bigger machine.");
  TORCH_CHECK(false, "out of memory on the remote machine: ", format_bytes(nbytes),
              " requested; this session holds ", format_bytes(bytes_in_use_), " of its limit of ",
              format_bytes(memory_limit_), ", and the server's sessions together hold ",
              format_bytes(budget_->used()), " of its ", format_bytes(budget_->limit()),
              ". Free tensors you no longer need, wait for other sessions to end, or use a bigger "
              "machine.");
}

c10::Storage StorageTable::allocate(uint64_t nbytes, c10::Device device, bool zeroed) const {
  reserve(nbytes);
  c10::DeviceGuard guard(device);
  c10::Storage storage(c10::Storage::use_byte_size_t(), nbytes, c10::GetAllocator(device.type()),
                       /*resizable=*/true);
  // Freed memory comes back from the allocator as it was left, possibly by
  // another session: a storage is never handed out with those bytes.
  if (zeroed) zero_bytes(storage, 0);
  return storage;
}

void StorageTable::keep(uint64_t id, c10::Storage storage) {
  auto it = storages_.find(id);
  const bool known = it != storages_.end();
  const uint64_t old_bytes = known ? it->second.counted_bytes : 0;
  const uint64_t new_bytes = storage.nbytes();
  const uint64_t old_cost = known ? cost_of(old_bytes, 1) : 0;
  const uint64_t new_cost = cost_of(new_bytes, 1);
  TORCH_CHECK(known || storages_.size() < max_storages_, "this session holds ", storages_.size(),
              " storages, the most a session may hold on this server; free "
              "tensors you no longer need");
  if (new_cost > old_cost) {
    const uint64_t growth = new_cost - old_cost;
    if (!fits_session_limit(growth) || !budget_->try_charge(growth)) {
      // Nothing stays under the ID: a storage a kernel grew past the limit is
      // dropped (and poisoned by the failing op), not kept uncounted.
      if (known) free(id);
      out_of_memory(new_bytes - old_bytes, growth);
    }
    bytes_charged_ += growth;
  } else {
    budget_->release(old_cost - new_cost);
    bytes_charged_ -= old_cost - new_cost;
  }
  bytes_in_use_ = bytes_in_use_ - old_bytes + new_bytes;
  if (known) count_on_device(it->second.storage.device(), old_bytes, 0);
  count_on_device(storage.device(), 0, new_bytes);
  KeptStorage& kept = known ? it->second : storages_[id];
  kept.counted_bytes = new_bytes;
  kept.storage = std::move(storage);
}

void StorageTable::recharge(const std::vector<uint64_t>& ids) {
  for (uint64_t id : ids) {
    auto it = storages_.find(id);
    if (it != storages_.end() && it->second.storage.nbytes() != it->second.counted_bytes) {
      keep(id, it->second.storage);
    }
  }
}

void StorageTable::free(uint64_t id) {
  poison_.erase(id);
  auto it = storages_.find(id);
  if (it == storages_.end()) return;
  const uint64_t cost = cost_of(it->second.counted_bytes, 1);
  budget_->release(cost);
  bytes_charged_ -= cost;
  bytes_in_use_ -= it->second.counted_bytes;
  count_on_device(it->second.storage.device(), it->second.counted_bytes, 0);
  storages_.erase(it);
}

void StorageTable::count_on_device(c10::Device device, uint64_t removed, uint64_t added) {
  auto it = std::find_if(devices_.begin(), devices_.end(),
                         [&](const DeviceBytes& d) { return d.device == device; });
  if (it == devices_.end()) {
    devices_.push_back(DeviceBytes{device});
    it = devices_.end() - 1;
  }
  // A storage's bytes were counted on its device when kept: removing never
  // exceeds what is in use there.
  it->in_use = it->in_use - removed + added;
  it->freed += removed;
  it->allocated += added;
  it->peak = std::max(it->peak, it->in_use);
}

StorageTable::DeviceBytes StorageTable::device_bytes(c10::Device device) const {
  for (const DeviceBytes& d : devices_) {
    if (d.device == device) return d;
  }
  return DeviceBytes{device};
}

void StorageTable::reset_peaks() {
  for (DeviceBytes& d : devices_) d.peak = d.in_use;
}

void StorageTable::poison(uint64_t id, const std::string& error) { poison_.emplace(id, error); }

void StorageTable::poison(const std::vector<uint64_t>& ids, const std::string& error) {
  for (uint64_t id : ids) poison_.emplace(id, error);
}

void StorageTable::check_not_poisoned(uint64_t id) const {
  auto it = poison_.find(id);
  if (it != poison_.end()) throw PoisonedStorage(it->second);
}

std::vector<uint64_t> StorageTable::known_ids() const {
  std::vector<uint64_t> ids;
  ids.reserve(storages_.size() + poison_.size());
  for (const auto& entry : storages_) ids.push_back(entry.first);
  for (const auto& entry : poison_) {
    if (!storages_.count(entry.first)) ids.push_back(entry.first);
  }
  return ids;
}

std::vector<const c10::StorageImpl*> StorageTable::storage_impls() const {
  std::vector<const c10::StorageImpl*> impls;
  impls.reserve(storages_.size());
  for (const auto& entry : storages_) impls.push_back(entry.second.storage.unsafeGetStorageImpl());
  return impls;
}

}  // namespace mycelya
