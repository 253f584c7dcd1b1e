// SPDX-License-Identifier: AGPL-3.0-or-later
//
// A CallRunner that loads libmycelya_python_calls.so the first time a call
// arrives, so a server or mock session that never runs a function pays
// nothing for Python: no interpreter is started, no libpython loaded.
#pragma once

#include <memory>
#include <mutex>
#include <string>

#include "server/call_runner.h"

namespace mycelya {

struct PythonCallsConfig {
  // The folder holding libmycelya_python_calls.so.
  std::string library_folder;
  // Embedding (mycelya-server): the interpreter and its shared libpython,
  // from the MYCELYA_PYTHON and MYCELYA_LIBPYTHON the Python package sets.
  // Both empty: this process is Python already (mock).
  std::string python;
  std::string libpython;
  // Set instead when calls cannot run here; each call fails with it.
  std::string unavailable;
};

// For mycelya-server: embeds the interpreter that MYCELYA_PYTHON names, or,
// without it, says how to start the server so that it can.
PythonCallsConfig embedded_python_config(const std::string& library_folder);

// For the mock provider: calls run in this process's own interpreter, which
// must be Python.
PythonCallsConfig in_process_python_config(const std::string& library_folder);

class LazyPythonCalls : public CallRunner {
 public:
  explicit LazyPythonCalls(PythonCallsConfig config) : config_(std::move(config)) {}
  CallOutcome run(const std::string& function, std::vector<at::Tensor> tensors) override;

 private:
  CallRunner& runner();

  const PythonCallsConfig config_;
  std::mutex mu_;
  std::unique_ptr<CallRunner> runner_;
  std::string failure_;  // why loading failed; it is not tried again
};

// The folder of the shared object that holds `address`, and of this
// process's executable.
std::string folder_of(const void* address);
std::string folder_of_executable();

}  // namespace mycelya
