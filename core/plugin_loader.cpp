// SPDX-License-Identifier: AGPL-3.0-or-later
#include "core/plugin_loader.h"

#include <dirent.h>
#include <dlfcn.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <sstream>
#include <stdexcept>

#include "core/joined_names.h"

namespace mycelya {
namespace {

constexpr char kPrefix[] = "libmycelya_provider_";
constexpr char kSuffix[] = ".so";

std::mutex& loader_mutex() {
  static std::mutex mu;
  return mu;
}

std::vector<std::string>& extra_dirs() {
  static std::vector<std::string> dirs;
  return dirs;
}

std::map<std::string, std::unique_ptr<Provider>>& loaded() {
  static std::map<std::string, std::unique_ptr<Provider>> providers;
  return providers;
}

std::vector<std::string> search_path() {
  std::vector<std::string> dirs;
  if (const char* env = std::getenv("MYCELYA_PROVIDER_PATH")) {
    std::stringstream ss(env);
    std::string dir;
    while (std::getline(ss, dir, ':')) {
      if (!dir.empty()) dirs.push_back(dir);
    }
  }
  dirs.insert(dirs.end(), extra_dirs().begin(), extra_dirs().end());
  return dirs;
}

// File names use '_' where provider names use '-' ("local-cuda").
std::string file_name_for(const std::string& provider) {
  std::string stem = provider;
  std::replace(stem.begin(), stem.end(), '-', '_');
  return kPrefix + stem + kSuffix;
}

std::string provider_for(const std::string& file_name) {
  const size_t prefix = sizeof(kPrefix) - 1, suffix = sizeof(kSuffix) - 1;
  if (file_name.size() <= prefix + suffix || file_name.compare(0, prefix, kPrefix) != 0 ||
      file_name.compare(file_name.size() - suffix, suffix, kSuffix) != 0) {
    return "";
  }
  std::string name = file_name.substr(prefix, file_name.size() - prefix - suffix);
  std::replace(name.begin(), name.end(), '_', '-');
  return name;
}

std::string find_plugin(const std::string& provider) {
  for (const auto& dir : search_path()) {
    std::string path = dir + "/" + file_name_for(provider);
    if (access(path.c_str(), R_OK) == 0) return path;
  }
  return "";
}

std::vector<std::string> list_providers_locked() {
  std::set<std::string> names;
  for (const auto& dir : search_path()) {
    DIR* d = opendir(dir.c_str());
    if (!d) continue;
    while (dirent* entry = readdir(d)) {
      std::string name = provider_for(entry->d_name);
      if (!name.empty()) names.insert(name);
    }
    closedir(d);
  }
  return {names.begin(), names.end()};
}

}  // namespace

void add_plugin_dir(const std::string& dir) {
  std::lock_guard<std::mutex> lock(loader_mutex());
  auto& dirs = extra_dirs();
  if (std::find(dirs.begin(), dirs.end(), dir) == dirs.end()) dirs.push_back(dir);
}

std::vector<std::string> available_providers() {
  std::lock_guard<std::mutex> lock(loader_mutex());
  return list_providers_locked();
}

Provider& load_provider(const std::string& name) {
  std::lock_guard<std::mutex> lock(loader_mutex());
  auto it = loaded().find(name);
  if (it != loaded().end()) return *it->second;

  const std::string path = find_plugin(name);
  if (path.empty()) {
    throw std::invalid_argument("Unknown provider '" + name +
                                "'. Providers found: " + joined_names(list_providers_locked()) +
                                " (searched $MYCELYA_PROVIDER_PATH and the package folder).");
  }
  // RTLD_LOCAL: plugins share nothing with each other except libmycelya_wire.so.
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!handle) {
    throw std::runtime_error("Could not load provider '" + name + "' from " + path + ": " +
                             dlerror());
  }
  auto version = reinterpret_cast<int (*)()>(dlsym(handle, "mycelya_provider_abi_version"));
  auto create = reinterpret_cast<Provider* (*)()>(dlsym(handle, "mycelya_provider_create"));
  if (!version || !create) {
    throw std::runtime_error("Provider plugin " + path +
                             " does not export mycelya_provider_abi_version/create.");
  }
  if (version() != kProviderAbiVersion) {
    throw std::runtime_error("Provider plugin " + path + " was built for provider ABI " +
                             std::to_string(version()) + ", this build needs " +
                             std::to_string(kProviderAbiVersion) + ": rebuild it.");
  }
  // The handle stays open for the life of the process: sessions hold its code.
  auto& slot = loaded()[name];
  slot.reset(create());
  return *slot;
}

}  // namespace mycelya
