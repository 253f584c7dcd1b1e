// SPDX-License-Identifier: AGPL-3.0-or-later
//
// A paused session's storages on disk (machine.pause()/resume()): one folder
// per session, <--state-dir>/<state key>, holding
//   manifest        every storage ID the session held when the save began;
//   <id>.storage    one storage: a header (ID, byte count, device name) and
//                   its bytes.
// Every file is written to "<name>.partial", synced, then renamed, so a save
// that stops halfway (the server killed) leaves whole files or none: a
// restore takes what was written and reports the rest as missing.
//
// The folder's name comes from a client (its state key), so it is checked to
// be exactly 64 hex digits before it becomes part of a path; file names come
// from the server alone. Files are read back with every size checked, as if a
// stranger had written them.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace mycelya {

// Whether `key` may name a state folder: 64 lowercase hex digits (the
// client's 256 random bits).
bool valid_state_key(const std::string& key);

// Creates `path` and its missing parents, mode 0700; throws std::runtime_error.
void create_folders(const std::string& path);

class StateFolder {
 public:
  // `path`: the session's folder, created (mode 0700, parents too) on the
  // first write.
  explicit StateFolder(std::string path);

  const std::string& path() const { return path_; }

  // Starts a save: removes what an earlier save left and writes the
  // manifest: the IDs, and how many commands the session had run.
  void begin_save(const std::vector<uint64_t>& ids, uint64_t commands_run);
  // Writes one storage; `fill` must put exactly `nbytes` bytes through
  // `write(data, n)` calls, in order.
  using ByteSink = std::function<void(const char* data, size_t n)>;
  void write_storage(uint64_t id, const std::string& device, uint64_t nbytes,
                     const std::function<void(const ByteSink&)>& fill);
  // Makes the renames durable.
  void end_save();

  struct Saved {
    uint64_t id = 0;
    std::string device;
    uint64_t nbytes = 0;
  };
  // What a restore finds: the saved storages, and the IDs the manifest names
  // that no file holds. Nothing saved (no folder): both empty.
  struct Contents {
    bool saved = false;  // a save began: the manifest exists
    uint64_t commands_run = 0;
    std::vector<Saved> storages;
    std::vector<uint64_t> missing;
  };
  Contents list() const;
  // Reads the bytes of a storage list() found, in pieces of at most
  // `chunk` bytes, through `take(data, n)`.
  void read_storage(const Saved& saved, size_t chunk,
                    const std::function<void(const char* data, size_t n)>& take) const;
  // Deletes the folder's files and the folder.
  void clear();
  // What the other sessions' folders beside this one hold on the server's
  // disk: bytes (allocated, at least a block per file) and folders.
  struct Usage {
    uint64_t bytes = 0;
    uint64_t folders = 0;
  };
  Usage usage_beside() const;

 private:
  std::string file(const std::string& name) const { return path_ + "/" + name; }

  std::string path_;
};

}  // namespace mycelya
