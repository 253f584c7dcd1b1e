// SPDX-License-Identifier: AGPL-3.0-or-later
//
// libmycelya_python_calls.so: runs wire::Call functions in Python through
// mycelya_torch._remote_runtime.run_call, handing it the executor's tensors
// as torch.Tensor objects over the same storages (torch's own wrapper, no
// copy). In mycelya-server it first starts an embedded interpreter: the
// server stays a C++ process that loads Python only when a function arrives.
#include <Python.h>
#include <pybind11/pybind11.h>
#include <torch/csrc/utils/pybind.h>

#include <string>
#include <utility>
#include <vector>

#include "server/call_runner.h"

namespace py = pybind11;

namespace mycelya {
namespace {

// Starts the interpreter `python` names, as if it ran: its sys.path, its
// site-packages (a venv's too), its sys.executable for pip. It must not take
// SIGINT or SIGTERM, which the server stops on.
std::string embed_python(const char* python) {
  PyConfig config;
  PyConfig_InitPythonConfig(&config);
  config.install_signal_handlers = 0;
  config.parse_argv = 0;
  PyStatus status = PyConfig_SetBytesString(&config, &config.program_name, python);
  if (!PyStatus_Exception(status)) {
    status = PyConfig_SetBytesString(&config, &config.executable, python);
  }
  if (!PyStatus_Exception(status)) status = Py_InitializeFromConfig(&config);
  PyConfig_Clear(&config);
  if (PyStatus_Exception(status)) {
    return std::string("cannot start the Python interpreter ") + python + ": " +
           (status.err_msg ? status.err_msg : "unknown error");
  }
  // Initializing took the GIL; every call takes it again for its span.
  PyEval_SaveThread();
  return "";
}

class PythonCalls : public CallRunner {
 public:
  CallOutcome run(const std::string& function, std::vector<at::Tensor> tensors) override {
    py::gil_scoped_acquire gil;
    try {
      // Imported at the first call, and again after a failure (a package
      // pip_install brings may be what was missing).
      if (!run_call_) {
        run_call_ = py::module_::import("mycelya_torch._remote_runtime").attr("run_call");
      }
      py::list arguments;
      for (at::Tensor& tensor : tensors) arguments.append(py::cast(std::move(tensor)));
      py::tuple result = run_call_(py::bytes(function), arguments);
      CallOutcome outcome;
      outcome.value = result[0].cast<std::string>();
      outcome.raised = result[1].cast<bool>();
      for (py::handle tensor : result[2].cast<py::list>()) {
        outcome.tensors.push_back(tensor.cast<at::Tensor>());
      }
      return outcome;
    } catch (py::error_already_set& e) {
      throw std::runtime_error(std::string("the machine's Python could not run the function: ") +
                               e.what());
    }
  }

  ~PythonCalls() override {
    // The interpreter may be gone at process exit; the reference is left then.
    if (Py_IsInitialized()) {
      py::gil_scoped_acquire gil;
      run_call_ = py::object();
    } else {
      run_call_.release();
    }
  }

 private:
  py::object run_call_;
};

}  // namespace
}  // namespace mycelya

extern "C" __attribute__((visibility("default"))) mycelya::CallRunner* mycelya_create_call_runner(
    const char* python, std::string* error) {
  if (!Py_IsInitialized()) {
    if (!python || !*python) {
      *error = "no Python interpreter runs in this process";
      return nullptr;
    }
    *error = mycelya::embed_python(python);
    if (!error->empty()) return nullptr;
  }
  return new mycelya::PythonCalls();
}
