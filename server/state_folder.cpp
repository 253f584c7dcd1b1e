// SPDX-License-Identifier: AGPL-3.0-or-later
#include "server/state_folder.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>
#include <stdexcept>

namespace mycelya {
namespace {

constexpr char kStorageMagic[8] = {'M', 'Y', 'C', 'S', 'T', 'O', 'R', '1'};
constexpr char kManifestMagic[8] = {'M', 'Y', 'C', 'M', 'A', 'N', 'I', '1'};
constexpr char kManifest[] = "manifest";
constexpr char kStorageSuffix[] = ".storage";
constexpr char kPartialSuffix[] = ".partial";
// Device names are "cpu" or "cuda:N".
constexpr uint32_t kMaxDeviceName = 64;

[[noreturn]] void fail(const std::string& what, const std::string& path) {
  throw std::runtime_error(what + " " + path + ": " + std::strerror(errno));
}

// A file descriptor closed on every path out.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

void write_all(int fd, const char* data, size_t n, const std::string& path) {
  while (n > 0) {
    const ssize_t written = write(fd, data, n);
    if (written < 0 && errno == EINTR) continue;
    if (written <= 0) fail("cannot write", path);
    data += written;
    n -= static_cast<size_t>(written);
  }
}

// Reads exactly n bytes; false at the end of the file.
bool read_all(int fd, char* data, size_t n) {
  while (n > 0) {
    const ssize_t got = read(fd, data, n);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return false;
    data += got;
    n -= static_cast<size_t>(got);
  }
  return true;
}

template <typename T>
void append(std::string* out, T value) {
  out->append(reinterpret_cast<const char*>(&value), sizeof(value));
}

// Writes <name>.partial through `fill`, syncs it, then renames it to <name>.
void write_atomically(const std::string& path,
                      const std::function<void(const StateFolder::ByteSink&)>& fill) {
  const std::string partial = path + kPartialSuffix;
  {
    Fd fd(open(partial.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600));
    if (fd.get() < 0) fail("cannot create", partial);
    fill([&](const char* data, size_t n) { write_all(fd.get(), data, n, partial); });
    if (fsync(fd.get()) != 0) fail("cannot sync", partial);
  }
  if (rename(partial.c_str(), path.c_str()) != 0) fail("cannot rename", partial);
}

// The ID in "<id>.storage", or false for any other name.
bool storage_file_id(const std::string& name, uint64_t* id) {
  const size_t suffix = sizeof(kStorageSuffix) - 1;
  if (name.size() <= suffix || name.size() > suffix + 20 ||
      name.compare(name.size() - suffix, suffix, kStorageSuffix) != 0) {
    return false;
  }
  uint64_t value = 0;
  for (size_t i = 0; i + suffix < name.size(); ++i) {
    const char c = name[i];
    if (c < '0' || c > '9') return false;
    const uint64_t digit = static_cast<uint64_t>(c - '0');
    if (value > (UINT64_MAX - digit) / 10) return false;
    value = value * 10 + digit;
  }
  *id = value;
  return true;
}

std::vector<std::string> file_names(const std::string& path) {
  std::vector<std::string> names;
  DIR* dir = opendir(path.c_str());
  if (!dir) {
    if (errno == ENOENT) return names;
    fail("cannot list", path);
  }
  while (const dirent* entry = readdir(dir)) {
    const std::string name = entry->d_name;
    if (name != "." && name != "..") names.push_back(name);
  }
  closedir(dir);
  return names;
}

uint64_t file_size(int fd, const std::string& path) {
  struct stat info {};
  if (fstat(fd, &info) != 0) fail("cannot stat", path);
  if (!S_ISREG(info.st_mode)) throw std::runtime_error(path + " is not a regular file");
  return static_cast<uint64_t>(info.st_size);
}

struct StorageHeader {
  StateFolder::Saved saved;
  uint64_t header_bytes = 0;
};

// Reads and checks a storage file's header against the file's name and size.
StorageHeader read_header(int fd, const std::string& path, uint64_t id_from_name) {
  char magic[sizeof(kStorageMagic)];
  uint64_t id = 0, nbytes = 0;
  uint32_t name_length = 0;
  const bool read = read_all(fd, magic, sizeof(magic)) &&
                    read_all(fd, reinterpret_cast<char*>(&id), sizeof(id)) &&
                    read_all(fd, reinterpret_cast<char*>(&nbytes), sizeof(nbytes)) &&
                    read_all(fd, reinterpret_cast<char*>(&name_length), sizeof(name_length));
  if (!read || std::memcmp(magic, kStorageMagic, sizeof(magic)) != 0 || id != id_from_name ||
      name_length > kMaxDeviceName) {
    throw std::runtime_error(path + " is not a storage this server saved");
  }
  std::string device(name_length, '\0');
  if (!read_all(fd, device.data(), name_length)) {
    throw std::runtime_error(path + " is not a storage this server saved");
  }
  StorageHeader header;
  header.header_bytes =
      sizeof(magic) + sizeof(id) + sizeof(nbytes) + sizeof(name_length) + name_length;
  const uint64_t size = file_size(fd, path);
  if (size < header.header_bytes || size - header.header_bytes != nbytes) {
    throw std::runtime_error(path + " holds " + std::to_string(size) + " bytes, not the " +
                             std::to_string(nbytes) + " its header promises");
  }
  header.saved = StateFolder::Saved{id, std::move(device), nbytes};
  return header;
}

// The manifest: magic, the commands run, the ID count, the IDs. False when
// there is none (nothing was saved).
bool read_manifest(const std::string& path, uint64_t* commands_run, std::vector<uint64_t>* ids) {
  Fd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (fd.get() < 0) {
    if (errno == ENOENT) return false;
    fail("cannot open", path);
  }
  char magic[sizeof(kManifestMagic)];
  uint64_t count = 0;
  constexpr uint64_t kHeader = sizeof(magic) + 2 * sizeof(uint64_t);
  const uint64_t size = file_size(fd.get(), path);
  if (size < kHeader || !read_all(fd.get(), magic, sizeof(magic)) ||
      std::memcmp(magic, kManifestMagic, sizeof(magic)) != 0 ||
      !read_all(fd.get(), reinterpret_cast<char*>(commands_run), sizeof(*commands_run)) ||
      !read_all(fd.get(), reinterpret_cast<char*>(&count), sizeof(count)) ||
      count > (size - kHeader) / sizeof(uint64_t) || size != kHeader + count * sizeof(uint64_t)) {
    throw std::runtime_error(path + " is not a manifest this server wrote");
  }
  ids->resize(count);
  if (!read_all(fd.get(), reinterpret_cast<char*>(ids->data()), count * sizeof(uint64_t))) {
    throw std::runtime_error(path + " ends early");
  }
  return true;
}

}  // namespace

bool valid_state_key(const std::string& key) {
  return key.size() == 64 && std::all_of(key.begin(), key.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

void create_folders(const std::string& path) {
  for (size_t slash = path.find('/', 1);; slash = path.find('/', slash + 1)) {
    const std::string prefix = path.substr(0, slash);
    if (mkdir(prefix.c_str(), 0700) != 0 && errno != EEXIST) fail("cannot create", prefix);
    if (slash == std::string::npos) return;
  }
}

StateFolder::StateFolder(std::string path) : path_(std::move(path)) {}

void StateFolder::begin_save(const std::vector<uint64_t>& ids, uint64_t commands_run) {
  create_folders(path_);
  for (const std::string& name : file_names(path_)) {
    if (unlink(file(name).c_str()) != 0) fail("cannot remove", file(name));
  }
  std::string manifest(kManifestMagic, sizeof(kManifestMagic));
  append(&manifest, commands_run);
  append(&manifest, static_cast<uint64_t>(ids.size()));
  manifest.append(reinterpret_cast<const char*>(ids.data()), ids.size() * sizeof(uint64_t));
  write_atomically(file(kManifest),
                   [&](const ByteSink& write) { write(manifest.data(), manifest.size()); });
}

void StateFolder::write_storage(uint64_t id, const std::string& device, uint64_t nbytes,
                                const std::function<void(const ByteSink&)>& fill) {
  if (device.size() > kMaxDeviceName) throw std::invalid_argument("device name too long");
  std::string header(kStorageMagic, sizeof(kStorageMagic));
  append(&header, id);
  append(&header, nbytes);
  append(&header, static_cast<uint32_t>(device.size()));
  header += device;
  write_atomically(file(std::to_string(id) + kStorageSuffix), [&](const ByteSink& write) {
    write(header.data(), header.size());
    uint64_t written = 0;
    fill([&](const char* data, size_t n) {
      written += n;
      if (written > nbytes) throw std::logic_error("a storage wrote more bytes than it holds");
      write(data, n);
    });
    if (written != nbytes) throw std::logic_error("a storage wrote fewer bytes than it holds");
  });
}

void StateFolder::end_save() {
  Fd fd(open(path_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (fd.get() < 0 || fsync(fd.get()) != 0) fail("cannot sync", path_);
}

StateFolder::Contents StateFolder::list() const {
  Contents contents;
  std::set<uint64_t> saved;
  for (const std::string& name : file_names(path_)) {
    uint64_t id = 0;
    if (!storage_file_id(name, &id)) continue;  // the manifest, or a partial file
    const std::string path = file(name);
    Fd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
    if (fd.get() < 0) fail("cannot open", path);
    contents.storages.push_back(read_header(fd.get(), path, id).saved);
    saved.insert(id);
  }
  std::sort(contents.storages.begin(), contents.storages.end(),
            [](const Saved& a, const Saved& b) { return a.id < b.id; });
  std::vector<uint64_t> ids;
  contents.saved = read_manifest(file(kManifest), &contents.commands_run, &ids);
  for (const uint64_t id : ids) {
    if (!saved.count(id)) contents.missing.push_back(id);
  }
  return contents;
}

void StateFolder::read_storage(const Saved& saved, size_t chunk,
                               const std::function<void(const char* data, size_t n)>& take) const {
  const std::string path = file(std::to_string(saved.id) + kStorageSuffix);
  Fd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (fd.get() < 0) fail("cannot open", path);
  const StorageHeader header = read_header(fd.get(), path, saved.id);
  if (header.saved.nbytes != saved.nbytes || header.saved.device != saved.device) {
    throw std::runtime_error(path + " changed while it was restored");
  }
  std::string buffer(std::min<uint64_t>(chunk, saved.nbytes), '\0');
  for (uint64_t left = saved.nbytes; left > 0;) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(left, buffer.size()));
    if (!read_all(fd.get(), buffer.data(), n)) throw std::runtime_error(path + " ends early");
    take(buffer.data(), n);
    left -= n;
  }
}

StateFolder::Usage StateFolder::usage_beside() const {
  // A file costs its allocated blocks, at least one: tiny saves add up too.
  constexpr uint64_t kBlock = 4096;
  const size_t slash = path_.rfind('/');
  const std::string root = slash == std::string::npos ? "." : path_.substr(0, slash);
  const std::string own = path_.substr(slash + 1);
  Usage usage;
  for (const std::string& folder : file_names(root)) {
    if (folder == own || !valid_state_key(folder)) continue;
    ++usage.folders;
    usage.bytes += kBlock;
    for (const std::string& name : file_names(root + "/" + folder)) {
      struct stat info {};
      if (lstat((root + "/" + folder + "/" + name).c_str(), &info) == 0) {
        const uint64_t size = std::max<uint64_t>(static_cast<uint64_t>(info.st_size),
                                                 static_cast<uint64_t>(info.st_blocks) * 512);
        usage.bytes += std::max<uint64_t>(size, kBlock);
      }
    }
  }
  return usage;
}

void StateFolder::clear() {
  for (const std::string& name : file_names(path_)) unlink(file(name).c_str());
  rmdir(path_.c_str());
}

}  // namespace mycelya
