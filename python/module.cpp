// SPDX-License-Identifier: AGPL-3.0-or-later
//
// mycelya_torch._C: the thin pybind11 layer over core. Everything that blocks
// on the network releases the GIL.
#include <ATen/CPUGeneratorImpl.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <torch/csrc/utils/pybind.h>

#include "core/allocator.h"
#include "core/device_table.h"
#include "core/gpu_types.h"
#include "core/logging.h"
#include "core/machine.h"
#include "core/plugin_loader.h"

namespace py = pybind11;

namespace mycelya {
namespace {

std::shared_ptr<Machine> make_machine(const std::string& provider, const std::string& gpu_type,
                                      int gpu_count, std::vector<std::string> packages,
                                      double idle_timeout_s) {
  validate_gpu_type(gpu_type);
  if (gpu_count < 1) throw std::invalid_argument("gpu_count must be at least 1");
  load_provider(provider);  // an unknown provider fails here, before anything starts
  MachineSpec spec{gpu_type, gpu_count, std::move(packages), idle_timeout_s};
  return std::make_shared<Machine>(provider, std::move(spec));
}

void seed_all(uint64_t seed) {
  for (const auto& machine : all_registered_machines()) {
    if (!machine->running()) continue;
    if (machine->shares_process_generators()) {
      // mock: its ops draw from this process's CPU generator. A queued Seed
      // would reseed it again later, repeating CPU draws made in between:
      // let queued ops finish, then seed it here.
      machine->synchronize();
      at::Generator generator = at::detail::getDefaultCPUGenerator();
      std::lock_guard<std::mutex> lock(generator.mutex());
      generator.set_current_seed(seed);
      continue;
    }
    wire::Command command;
    command.mutable_seed()->set_seed(seed);
    machine->enqueue(std::move(command));
  }
}

// What the machine cannot do, as Python's NotImplementedError.
py::error_already_set not_implemented(const std::logic_error& e) {
  PyErr_SetString(PyExc_NotImplementedError, e.what());
  return py::error_already_set();
}

}  // namespace
}  // namespace mycelya

PYBIND11_MODULE(_C, m) {
  using namespace mycelya;
  m.doc() = "mycelya-torch core (C++)";

  py::class_<Machine, std::shared_ptr<Machine>>(m, "Machine")
      .def(py::init(&make_machine), py::arg("provider"), py::arg("gpu_type"), py::arg("gpu_count"),
           py::arg("packages"), py::arg("idle_timeout_s"))
      .def_property_readonly("machine_id", &Machine::id)
      .def_property_readonly("provider", &Machine::provider)
      .def("start", &Machine::start, py::call_guard<py::gil_scoped_release>())
      .def("stop", &Machine::stop, py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("running", &Machine::running)
      .def_property_readonly("devices", &Machine::devices)
      .def(
          "device_index",
          [](const std::shared_ptr<Machine>& machine, const std::string& type, int index) {
            return static_cast<int>(register_device(machine, machine->slot_of(type, index)));
          },
          py::arg("type"), py::arg("index"))
      .def("synchronize", &Machine::synchronize, py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("batches_sent", &Machine::batches_sent)
      .def_property_readonly("round_trips", &Machine::round_trips)
      .def_property_readonly("early_reads", &Machine::early_reads)
      .def_property_readonly("bytes_uploaded", &Machine::bytes_uploaded);

  m.def("add_plugin_dir", &add_plugin_dir);
  m.def("available_providers", &available_providers);
  m.def("supported_gpu_types", &supported_gpu_types);
  m.def("validate_gpu_type", &validate_gpu_type);
  m.def("set_log_level", &set_log_level);
  m.def("log_level", &log_level);
  m.def("registered_device_count", &registered_device_count);
  m.def("seed_all", &seed_all, py::call_guard<py::gil_scoped_release>());
  m.def(
      "machine_of",
      [](int device_index) {
        return lookup_device(static_cast<c10::DeviceIndex>(device_index)).machine;
      },
      py::arg("device_index"));
  m.def(
      "get_rng_state",
      [](int device_index) {
        DeviceEntry entry = lookup_device(static_cast<c10::DeviceIndex>(device_index));
        std::string state;
        try {
          py::gil_scoped_release release;
          state = entry.machine->rng_state(entry.slot);
        } catch (const std::logic_error& e) {
          throw not_implemented(e);
        }
        return py::bytes(state);
      },
      py::arg("device_index"));
  m.def(
      "set_rng_state",
      [](int device_index, const std::string& state) {
        DeviceEntry entry = lookup_device(static_cast<c10::DeviceIndex>(device_index));
        try {
          entry.machine->set_rng_state(entry.slot, state);
        } catch (const std::logic_error& e) {
          throw not_implemented(e);
        }
      },
      py::arg("device_index"), py::arg("state"));
  m.def(
      "storage_id",
      [](const at::Tensor& tensor) {
        TORCH_CHECK(tensor.is_privateuseone(), "storage_id: not a mycelya tensor");
        return storage_id(tensor.storage());
      },
      py::arg("tensor"));
}
