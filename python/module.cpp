// SPDX-License-Identifier: AGPL-3.0-or-later
//
// mycelya_torch._C: the thin pybind11 layer over core. Everything that blocks
// on the network releases the GIL.
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <torch/csrc/Generator.h>
#include <torch/csrc/utils/pybind.h>

#include <map>
#include <memory>

#include "core/allocator.h"
#include "core/device_table.h"
#include "core/generator.h"
#include "core/gpu_types.h"
#include "core/logging.h"
#include "core/machine.h"
#include "core/plugin_loader.h"
#include "core/remote_call.h"
#include "core/transfer_progress.h"

namespace py = pybind11;

namespace mycelya {
namespace {

std::shared_ptr<Machine> make_machine(const std::string& provider, const std::string& gpu_type,
                                      int gpu_count, std::vector<std::string> packages,
                                      double idle_timeout_s,
                                      std::map<std::string, std::string> options) {
  validate_gpu_type(gpu_type);
  validate_gpu_count(gpu_type, gpu_count);
  MachineSpec spec{gpu_type, gpu_count, std::move(packages), idle_timeout_s};
  spec.options = std::move(options);
  // An unknown provider, or a spec it cannot serve, fails here, before anything starts.
  load_provider(provider).validate(spec);
  return std::make_shared<Machine>(provider, std::move(spec));
}

const c10::impl::DeviceGuardImplInterface& guard() {
  return *c10::impl::getDeviceGuardImpl(c10::DeviceType::PrivateUse1);
}

c10::Device device(int index) {
  return c10::Device(c10::DeviceType::PrivateUse1, static_cast<c10::DeviceIndex>(index));
}

// Refuses an index that names no device of a running machine (ValueError).
c10::DeviceIndex running_index(int index) {
  const c10::DeviceIndex checked = checked_device_index(index);
  lookup_device(checked);
  return checked;
}

// Calls `call(generator)` on the default generator of running device `index`,
// as torch's Generator methods do (under the generator's mutex), but without
// the GIL: seeding may wait for room in the queue, and reading a state waits
// for the machine.
template <typename Call>
auto with_default_generator(int index, const Call& call) {
  at::Generator generator = default_generator(running_index(index));
  py::gil_scoped_release release;
  std::lock_guard<std::mutex> lock(generator.mutex());
  return call(generator);
}

void bind_machine(py::module_& m) {
  py::class_<Machine, std::shared_ptr<Machine>>(m, "Machine")
      .def(py::init(&make_machine), py::arg("provider"), py::arg("gpu_type"), py::arg("gpu_count"),
           py::arg("packages"), py::arg("idle_timeout_s"), py::arg("options"))
      .def_property_readonly("machine_id", &Machine::id)
      .def_property_readonly("provider", &Machine::provider)
      .def("start", &Machine::start, py::call_guard<py::gil_scoped_release>())
      .def("stop", &Machine::stop, py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("running", &Machine::running)
      .def("pause", &Machine::pause, py::call_guard<py::gil_scoped_release>())
      .def("resume", &Machine::resume, py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("paused", &Machine::paused)
      .def_property_readonly("unsaved_storages", &Machine::unsaved_storages)
      .def_property_readonly("devices", &Machine::devices)
      .def(
          "device_index",
          [](const Machine& machine, const std::string& type, int index) {
            return static_cast<int>(machine.device_index(machine.slot_of(type, index)));
          },
          py::arg("type"), py::arg("index"))
      .def("synchronize", &Machine::synchronize, py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("batches_sent", &Machine::batches_sent)
      .def_property_readonly("round_trips", &Machine::round_trips)
      .def_property_readonly("early_reads", &Machine::early_reads)
      .def_property_readonly("bytes_uploaded", &Machine::bytes_uploaded)
      .def("memory_stats",
           [](Machine& machine) {
             Machine::MemoryStats stats;
             {
               py::gil_scoped_release release;
               stats = machine.memory_stats();
             }
             py::dict result;
             result["storages"] = stats.storages;
             result["bytes_in_use"] = stats.bytes_in_use;
             result["generators"] = stats.generators;
             result["memory_limit"] = stats.memory_limit;
             result["tracked_storages"] = stats.tracked_storages;
             result["interned_ops"] = stats.interned_ops;
             return result;
           })
      .def_property_readonly("tracked_storages", &Machine::tracked_storages)
      .def_property_readonly("interned_ops", &Machine::interned_ops);
}

// Providers and what a machine may ask of them (core/plugin_loader.h,
// core/gpu_types.h): the rules live in core, and Python asks them here.
void bind_providers(py::module_& m) {
  m.def("add_plugin_dir", &add_plugin_dir);
  m.def("available_providers", &available_providers);
  m.def("supported_gpu_types", &supported_gpu_types);
  m.def("validate_gpu_type", &validate_gpu_type, py::arg("gpu_type"));
  m.def("validate_gpu_count", &validate_gpu_count, py::arg("gpu_type"), py::arg("gpu_count"));
}

void bind_logging(py::module_& m) {
  m.def("set_log_level", &set_log_level);
  m.def("log_level", &log_level);
}

// The device table and the current device (core/device_table.h, core/guard.cpp).
void bind_devices(py::module_& m) {
  m.def("max_devices", [] { return static_cast<int>(kMaxDevices); });
  m.def("device_count", &device_count);
  m.def("running_device_indices", [] {
    std::vector<int> indices;
    for (const DeviceRef& entry : running_devices()) indices.push_back(entry->index);
    return indices;
  });
  m.def(
      "machine_of", [](int index) { return lookup_device(running_index(index))->machine; },
      py::arg("index"));
  m.def(
      "remote_device_name",
      [](int index) { return lookup_device(running_index(index))->remote_name; }, py::arg("index"));
  // What the machine's Hello said of the device (torch.mycelya.get_device_properties).
  m.def(
      "device_properties",
      [](int index) {
        const DeviceRef entry = lookup_device(running_index(index));
        const wire::DeviceProperties& properties = entry->properties;
        py::dict result;
        result["remote_device"] = entry->remote_name;
        result["name"] = properties.name();
        result["total_memory"] = properties.total_memory();
        result["major"] = properties.major();
        result["minor"] = properties.minor();
        result["multi_processor_count"] = properties.multi_processor_count();
        result["bf16_supported"] = properties.bf16_supported();
        result["fp16_supported"] = properties.fp16_supported();
        return result;
      },
      py::arg("index"));
  m.def("current_device", [] { return static_cast<int>(guard().getDevice().index()); });
  m.def(
      "set_device", [](int index) { guard().setDevice(device(running_index(index))); },
      py::arg("index"));
  // Makes `index` current and returns the previous one, for device(...) blocks.
  m.def(
      "exchange_device",
      [](int index) {
        return static_cast<int>(guard().exchangeDevice(device(running_index(index))).index());
      },
      py::arg("index"));
  // Restores a device a block left, which may have stopped inside it.
  m.def(
      "restore_device", [](int index) { guard().uncheckedSetDevice(device(index)); },
      py::arg("index"));
}

// Random generators (core/generator.h): the device module's calls to a
// device's default generator go through with_default_generator.
void bind_seeding(py::module_& m) {
  m.def("manual_seed_all", &seed_all, py::arg("seed"), py::call_guard<py::gil_scoped_release>());
  m.def(
      "default_generator",
      [](int index) {
        return py::reinterpret_steal<py::object>(
            THPGenerator_initDefaultGenerator(default_generator(running_index(index))));
      },
      py::arg("index"));
  m.def(
      "manual_seed",
      [](int index, uint64_t seed) {
        with_default_generator(index, [&](at::Generator& g) { g.set_current_seed(seed); });
      },
      py::arg("index"), py::arg("seed"));
  m.def(
      "seed",
      [](int index) {
        return with_default_generator(index, [](at::Generator& g) { return g.seed(); });
      },
      py::arg("index"));
  m.def(
      "initial_seed",
      [](int index) {
        return with_default_generator(index, [](at::Generator& g) { return g.current_seed(); });
      },
      py::arg("index"));
  m.def(
      "get_rng_state",
      [](int index) {
        return with_default_generator(index, [](at::Generator& g) { return g.get_state(); });
      },
      py::arg("index"));
  m.def(
      "set_rng_state",
      [](int index, const at::Tensor& state) {
        with_default_generator(index, [&](at::Generator& g) { g.set_state(state); });
      },
      py::arg("index"), py::arg("state"));
}

// Python functions on a machine (core/remote_call.h, _remote_runtime.py).
void bind_remote_calls(py::module_& m) {
  py::class_<QueuedCall>(m, "QueuedCall")
      .def_readonly("call_id", &QueuedCall::call_id)
      .def("take", [](const QueuedCall& call) {
        CallResult result;
        {
          py::gil_scoped_release release;
          result = take_call_result(call);
        }
        return py::make_tuple(py::bytes(result.value), result.raised, result.tensors);
      });
  m.def(
      "queue_call",
      [](const py::bytes& function, std::vector<at::Tensor> tensors, int device_index) {
        std::string bytes = function;
        const c10::DeviceIndex index = running_index(device_index);
        py::gil_scoped_release release;
        return queue_call(std::move(bytes), std::move(tensors), index);
      },
      py::arg("function"), py::arg("tensors"), py::arg("device_index"));
}

// Tensors' storages and the progress of large copies (core/allocator.h,
// core/transfer_progress.h).
void bind_tensors(py::module_& m) {
  // `report(label, done, total)`, or None for none. Called from whichever thread copies.
  m.def(
      "set_progress_reporter",
      [](py::object report) {
        if (report.is_none()) return set_progress_reporter({});
        // Shared, not copied: copies of the reporter live in copying threads,
        // which must not touch Python reference counts without the GIL. The
        // last one to go drops the reference under the GIL, or, after the
        // interpreter has finalized (the reporter is a static), lets it go.
        std::shared_ptr<py::object> held(new py::object(std::move(report)), [](py::object* object) {
          if (Py_IsInitialized()) {
            py::gil_scoped_acquire gil;
            delete object;
          } else {
            object->release();
            delete object;
          }
        });
        set_progress_reporter([held](const std::string& label, uint64_t done, uint64_t total) {
          py::gil_scoped_acquire gil;
          try {
            (*held)(label, done, total);
          } catch (py::error_already_set&) {
            // A progress bar never fails a copy.
          }
        });
      },
      py::arg("report"));
  m.def(
      "storage_id",
      [](const at::Tensor& tensor) {
        TORCH_CHECK(tensor.is_privateuseone(), "storage_id: not a mycelya tensor");
        return storage_id(tensor.storage());
      },
      py::arg("tensor"));
}

}  // namespace
}  // namespace mycelya

PYBIND11_MODULE(_C, m) {
  m.doc() = "mycelya-torch core (C++)";
  mycelya::bind_machine(m);
  mycelya::bind_providers(m);
  mycelya::bind_logging(m);
  mycelya::bind_devices(m);
  mycelya::bind_seeding(m);
  mycelya::bind_remote_calls(m);
  mycelya::bind_tensors(m);
}
