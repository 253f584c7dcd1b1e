// SPDX-License-Identifier: AGPL-3.0-or-later
#include "server/python_calls_loader.h"

#include <dlfcn.h>
#include <limits.h>
#include <unistd.h>

#include <cstdlib>
#include <stdexcept>

namespace mycelya {

namespace {

std::string env_or_empty(const char* name) {
  const char* value = std::getenv(name);
  return value ? value : "";
}

std::string dl_error() {
  const char* error = dlerror();
  return error ? error : "unknown error";
}

}  // namespace

namespace {

std::string folder_of_path(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

}  // namespace

std::string folder_of(const void* address) {
  Dl_info info{};
  if (dladdr(address, &info) == 0 || !info.dli_fname) return ".";
  return folder_of_path(info.dli_fname);
}

std::string folder_of_executable() {
  char path[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", path, sizeof(path) - 1);
  if (n <= 0) return ".";
  return folder_of_path(std::string(path, static_cast<size_t>(n)));
}

PythonCallsConfig embedded_python_config(const std::string& library_folder) {
  PythonCallsConfig config;
  config.library_folder = library_folder;
  config.python = env_or_empty("MYCELYA_PYTHON");
  config.libpython = env_or_empty("MYCELYA_LIBPYTHON");
  if (config.python.empty() || config.libpython.empty()) {
    config.unavailable =
        "this mycelya-server has no Python to run functions in: start it with the "
        "`mycelya-server` command of the mycelya_torch package, which names its interpreter "
        "(MYCELYA_PYTHON and MYCELYA_LIBPYTHON)";
  }
  return config;
}

PythonCallsConfig in_process_python_config(const std::string& library_folder) {
  PythonCallsConfig config;
  config.library_folder = library_folder;
  if (!dlsym(RTLD_DEFAULT, "Py_IsInitialized")) {
    config.unavailable =
        "the mock provider runs functions in the client's own Python, and "
        "this process is not Python";
  }
  return config;
}

CallOutcome LazyPythonCalls::run(const std::string& function, std::vector<at::Tensor> tensors) {
  return runner().run(function, std::move(tensors));
}

CallRunner& LazyPythonCalls::runner() {
  std::lock_guard<std::mutex> lock(mu_);
  if (runner_) return *runner_;
  if (!config_.unavailable.empty()) throw std::runtime_error(config_.unavailable);
  if (!failure_.empty()) throw std::runtime_error(failure_);
  // Extension modules (torch's own) find the interpreter's symbols only in
  // the global scope, so an embedded libpython must be loaded globally.
  if (!config_.libpython.empty() && !dlopen(config_.libpython.c_str(), RTLD_NOW | RTLD_GLOBAL)) {
    failure_ = "cannot load the Python library " + config_.libpython + ": " + dl_error();
    throw std::runtime_error(failure_);
  }
  const std::string library = config_.library_folder + "/" + kPythonCallsLibrary;
  void* handle = dlopen(library.c_str(), RTLD_NOW | RTLD_LOCAL);
  auto create =
      handle ? reinterpret_cast<CreateCallRunner>(dlsym(handle, kCreateCallRunnerSymbol)) : nullptr;
  if (!create) {
    failure_ = "cannot load " + library + ": " + dl_error();
    throw std::runtime_error(failure_);
  }
  std::string error;
  runner_.reset(create(config_.python.c_str(), &error));
  if (!runner_) {
    failure_ = "cannot start Python for remote functions: " + error;
    throw std::runtime_error(failure_);
  }
  return *runner_;
}

}  // namespace mycelya
