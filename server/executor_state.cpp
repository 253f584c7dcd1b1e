// SPDX-License-Identifier: AGPL-3.0-or-later
//
// Pausing a session: its storages go to its state folder (server/state_folder.h)
// and come back, under the same IDs, in the session that resumes it.
#include <ATen/ATen.h>

#include <algorithm>
#include <cstring>
#include <mutex>

#include "server/executor.h"
#include "server/state_folder.h"

namespace mycelya {
namespace {

// A paused storage crosses between a device and its file this many bytes at a time.
constexpr uint64_t kStateChunkBytes = 64 << 20;
// Paused sessions one server keeps on its disk at most.
constexpr uint64_t kMaxPausedSessions = 1024;
// StateReport.commands_run of a session that lost count (an undecodable batch).
constexpr uint64_t kCommandsUncounted = UINT64_MAX;

}  // namespace

c10::Device Executor::device_named(const std::string& name) const {
  std::string offered;
  for (size_t i = 0; i < options_.device_names.size(); ++i) {
    if (options_.device_names[i] == name) return options_.devices[i];
    offered += (offered.empty() ? "" : ", ") + options_.device_names[i];
  }
  TORCH_CHECK(false, "a storage was saved on ", name,
              ", which this server does not offer (it offers ", offered, ")");
}

void Executor::save_state(wire::StateReport* report) {
  TORCH_CHECK(!options_.state_dir.empty(),
              "this session cannot pause: the server keeps no state (start mycelya-server with "
              "--state-dir) or the client sent no state key");
  // A snapshot after a failed op would be taken for a good one later.
  TORCH_CHECK(!pending_error_,
              "an earlier op failed (its error comes with this response), so "
              "nothing was saved; pause again once it is handled");
  // One save at a time on this server: each checks what the others left.
  static std::mutex saving;
  std::lock_guard<std::mutex> one_at_a_time(saving);
  StateFolder folder(options_.state_dir);
  // Paused sessions keep at most the server's memory budget, in at most
  // kMaxPausedSessions folders, on its disk, so sessions that save and never
  // come back cannot fill it.
  const StateFolder::Usage beside = folder.usage_beside();
  TORCH_CHECK(beside.folders < kMaxPausedSessions, "cannot pause: the server already keeps ",
              beside.folders, " paused sessions, its most; resume or stop some of them first");
  const uint64_t budget = storages_.budget().limit();
  const uint64_t charged = storages_.bytes_charged();
  TORCH_CHECK(beside.bytes <= budget && charged <= budget - beside.bytes,
              "cannot pause: the server's state folder already holds ", beside.bytes,
              " bytes of other paused sessions, and this one's ", charged,
              " bytes would take it past the server's memory budget (", budget,
              " bytes); resume or stop the other paused machines first");
  // Poisoned IDs go in the manifest but not on disk: a restore then poisons
  // them again rather than bring back bytes no op finished writing.
  std::vector<uint64_t> ids = storages_.known_ids();
  std::sort(ids.begin(), ids.end());
  try {
    folder.begin_save(ids, commands_counted_ ? commands_run_ : kCommandsUncounted);
    uint64_t bytes = 0;
    for (const uint64_t id : ids) {
      const c10::Storage* kept = storages_.find(id);
      if (!kept || storages_.is_poisoned(id)) continue;
      const c10::Storage& storage = *kept;
      const uint64_t nbytes = storage.nbytes();
      const std::string& device = options_.device_names[device_slot(storage.device())];
      folder.write_storage(id, device, nbytes, [&](const StateFolder::ByteSink& write) {
        if (storage.device().is_cpu()) {
          write(static_cast<const char*>(storage.data()), nbytes);
          return;
        }
        // A device's bytes come through the host a piece at a time.
        for (uint64_t from = 0; from < nbytes; from += kStateChunkBytes) {
          const uint64_t count = std::min<uint64_t>(kStateChunkBytes, nbytes - from);
          const at::Tensor host = storage_bytes(storage, from, count).cpu();
          write(static_cast<const char*>(host.const_data_ptr()), count);
        }
      });
      report->add_storage_ids(id);
      bytes += nbytes;
    }
    folder.end_save();
    report->set_bytes(bytes);
    report->set_commands_run(commands_counted_ ? commands_run_ : kCommandsUncounted);
  } catch (...) {
    // Half a save (the disk full, say) is no snapshot: nothing stays.
    folder.clear();
    throw;
  }
}

void Executor::restore_state(wire::StateReport* report) {
  TORCH_CHECK(!options_.state_dir.empty(),
              "this session cannot resume: the server keeps no state (start mycelya-server with "
              "--state-dir) or the client sent no state key");
  StateFolder folder(options_.state_dir);
  const StateFolder::Contents contents = folder.list();
  TORCH_CHECK(contents.saved,
              "nothing was saved for this machine on this server (its state folder holds no "
              "manifest): its storages are gone");
  uint64_t bytes = 0;
  for (const StateFolder::Saved& saved : contents.storages) {
    TORCH_CHECK(!storages_.contains(saved.id) && !storages_.is_poisoned(saved.id), "storage ",
                saved.id,
                " is in use already; a restore must come before anything else in a session");
    const c10::Device device = device_named(saved.device);
    c10::Storage storage = storages_.allocate(saved.nbytes, device, /*zeroed=*/false);
    uint64_t from = 0;
    folder.read_storage(saved, kStateChunkBytes, [&](const char* data, size_t n) {
      if (device.is_cpu()) {
        std::memcpy(static_cast<char*>(storage.mutable_data()) + from, data, n);
      } else {
        const at::Tensor host = at::from_blob(const_cast<char*>(data), {static_cast<int64_t>(n)},
                                              at::TensorOptions().dtype(at::kByte));
        storage_bytes(storage, from, n).copy_(host);
      }
      from += n;
    });
    storages_.keep(saved.id, std::move(storage));
    report->add_storage_ids(saved.id);
    bytes += saved.nbytes;
  }
  for (const uint64_t id : contents.missing) {
    storages_.poison(id, "storage " + std::to_string(id) +
                             " was not saved when its machine paused (the server stopped before "
                             "writing it, or an op that should have written it had failed)");
    report->add_missing_ids(id);
  }
  report->set_bytes(bytes);
  report->set_commands_run(contents.commands_run);
  folder.clear();
}

}  // namespace mycelya
