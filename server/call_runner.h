// SPDX-License-Identifier: AGPL-3.0-or-later
//
// How the executor runs a Python function (wire::Call): it hands the call's
// bytes and its tensors, views of the session's own storages, to a
// CallRunner, which runs them in a Python interpreter with this process's
// torch. Nothing is copied: a CUDA tensor reaches the function as the same
// memory the executor's ops write.
//
// The executor knows no Python. mycelya-server embeds an interpreter on the
// first call (server/embedded_python.h); the mock provider runs calls in the
// client's own interpreter. Both load libmycelya_python_calls.so
// (server/python_calls.cpp), the one piece built against Python.
#pragma once

#include <ATen/Tensor.h>

#include <string>
#include <vector>

namespace mycelya {

struct CallOutcome {
  std::string value;  // what the function returned or raised, for the client
  bool raised = false;
  std::vector<at::Tensor> tensors;  // the tensors `value` refers to, in order
};

class CallRunner {
 public:
  virtual ~CallRunner() = default;
  // Runs one call. An exception inside the function is an outcome with
  // `raised`; throws std::runtime_error only when no function could run
  // (no interpreter, a runtime that failed to import).
  virtual CallOutcome run(const std::string& function, std::vector<at::Tensor> tensors) = 0;
};

// The C entry point of libmycelya_python_calls.so: a new runner (delete it
// with `delete`). `python` is the interpreter to embed when none runs in this
// process yet (its libpython already loaded with RTLD_GLOBAL); empty when the
// process is Python itself. On failure returns null and sets *error.
extern "C" {
using CreateCallRunner = CallRunner* (*)(const char* python, std::string* error);
}
constexpr const char* kCreateCallRunnerSymbol = "mycelya_create_call_runner";
constexpr const char* kPythonCallsLibrary = "libmycelya_python_calls.so";

}  // namespace mycelya
