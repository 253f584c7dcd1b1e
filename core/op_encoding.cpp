// SPDX-License-Identifier: AGPL-3.0-or-later
#include "core/op_encoding.h"

#include <c10/util/Exception.h>

#include <cstring>
#include <optional>
#include <string>
#include <unordered_map>

#include "core/allocator.h"
#include "core/generator.h"
#include "core/machine.h"
#include "core/remote_tensor.h"
#include "proto/op_policy.h"
#include "proto/schema_types.h"
#include "proto/tensor_geometry.h"

namespace mycelya {
namespace {

std::string device_name(const DeviceEntry& entry) {
  return "mycelya:" + std::to_string(static_cast<int>(entry.index));
}

// "mycelya:1 (machine mock-12-3's cuda:0)"
std::string device_and_machine(const DeviceEntry& entry) {
  return device_name(entry) + " (machine " + entry.machine->id() + "'s " + entry.remote_name + ")";
}

void add_tensor(const at::Tensor& tensor, OpPlacement& placement, bool& saw_cpu_tensor,
                std::string& cpu_device) {
  if (!tensor.defined()) return;
  if (tensor.is_privateuseone()) {
    placement.add(device_entry(tensor));
  } else if (tensor.dim() != 0) {
    // Zero-dim CPU tensors are scalars and may travel with remote ones.
    saw_cpu_tensor = true;
    cpu_device = tensor.device().str();
  }
}

}  // namespace

void check_same_machine(const DeviceEntry& a, const DeviceEntry& b) {
  TORCH_CHECK(a.machine == b.machine,
              "Cannot perform operations between tensors on different remote devices: an op "
              "mixes ",
              device_and_machine(a), " and ", device_and_machine(b),
              ". Cross-machine remote transfers are not supported: copy through the CPU with "
              ".cpu() first.");
}

void OpPlacement::add(const DeviceRef& device) {
  if (entry == device) return;
  if (!entry) {
    entry = device;
    return;
  }
  check_same_machine(*entry, *device);
  TORCH_CHECK(false,
              "Expected all tensors to be on the same device, but found at least two devices, ",
              device_name(*entry), " and ", device_name(*device), "!");
}

OpPlacement place_op(const c10::OperatorHandle& op, c10::ArrayRef<c10::IValue> args) {
  OpPlacement placement;
  bool saw_cpu_tensor = false;
  std::string cpu_device;
  for (const auto& arg : args) {
    if (arg.isTensor()) {
      add_tensor(arg.toTensor(), placement, saw_cpu_tensor, cpu_device);
    } else if (arg.isTensorList() || arg.isList()) {
      for (const c10::IValue& item : arg.toListRef()) {
        if (item.isTensor()) add_tensor(item.toTensor(), placement, saw_cpu_tensor, cpu_device);
      }
    } else if (arg.isDevice() && arg.toDevice().is_privateuseone()) {
      placement.add(lookup_device(arg.toDevice().index()));
    }
  }
  TORCH_CHECK(placement.entry, "mycelya: ", op_display_name(op),
              " was dispatched to mycelya without a mycelya tensor or device.");
  TORCH_CHECK(!saw_cpu_tensor,
              "Expected all tensors to be on the same device, but found at least two devices, ",
              device_name(*placement.entry), " and ", cpu_device, "! (in ", op_display_name(op),
              "; move the CPU tensor with .to(device) first)");
  return placement;
}

void encode_value(const c10::IValue& value, const c10::TypePtr& type, const OpPlacement& placement,
                  wire::Value* out) {
  if (is_generator_type(type)) {
    // Random ops draw from a generator of the op's device, never from a
    // process-wide one: the device's default unless the caller passed one.
    encode_generator(
        value.isGenerator() ? std::optional<at::Generator>(value.toGenerator()) : std::nullopt,
        *placement.entry, out->mutable_generator());
  } else if (value.isNone()) {
    out->set_none(true);
  } else if (value.isTensor()) {
    const at::Tensor& tensor = value.toTensor();
    if (!tensor.defined()) {
      out->set_none(true);
    } else if (tensor.is_privateuseone()) {
      write_tensor_ref(tensor, storage_id(tensor.storage()), device_entry(tensor)->slot,
                       out->mutable_tensor());
    } else {
      auto contiguous = tensor.contiguous();
      auto* scalar = out->mutable_cpu_scalar();
      scalar->set_dtype(static_cast<int32_t>(tensor.scalar_type()));
      scalar->set_data(static_cast<const char*>(contiguous.const_data_ptr()),
                       contiguous.element_size());
      scalar->set_wrapped_number(tensor.unsafeGetTensorImpl()->is_wrapped_number());
    }
  } else if (value.isBool()) {
    out->set_bool_value(value.toBool());
  } else if (value.isInt()) {
    out->set_int_value(value.toInt());
  } else if (value.isSymInt()) {
    out->set_int_value(value.toSymInt().guard_int(__FILE__, __LINE__));
  } else if (value.isDouble()) {
    out->set_double_value(value.toDouble());
  } else if (value.isComplexDouble()) {
    auto c = value.toComplexDouble();
    out->mutable_complex_value()->set_real(c.real());
    out->mutable_complex_value()->set_imag(c.imag());
  } else if (value.isString()) {
    out->set_string_value(value.toStringRef());
  } else if (value.isIntList()) {
    auto list = value.toIntList();
    auto* values = out->mutable_int_list()->mutable_values();
    for (int64_t v : list) values->Add(v);
  } else if (value.isDoubleList()) {
    auto list = value.toDoubleList();
    auto* values = out->mutable_double_list()->mutable_values();
    for (double v : list) values->Add(v);
  } else if (value.isBoolList()) {
    auto list = value.toBoolList();
    auto* values = out->mutable_bool_list()->mutable_values();
    for (bool v : list) values->Add(v);
  } else if (value.isTensorList() || value.isList()) {
    auto* list = out->mutable_list();
    for (const c10::IValue& item : value.toListRef()) {
      // Items of Tensor[] and Tensor?[] lists: tensors, CPU scalars or None.
      encode_value(item, c10::TensorType::get(), placement, list->add_values());
    }
  } else if (value.isDevice()) {
    const c10::Device device = value.toDevice();
    TORCH_CHECK(device.is_privateuseone(), "mycelya: device argument ", device,
                " cannot be sent to a remote machine.");
    out->set_device(lookup_device(device.index())->slot);
  } else {
    TORCH_CHECK_NOT_IMPLEMENTED(false, "mycelya: cannot send an argument of type ", value.tagKind(),
                                " to a remote machine.");
  }
}

namespace {

// What the client needs to know of an op per call, worked out once per op
// and thread: every queued record carries the name.
struct OpFacts {
  std::string display_name;
  std::optional<std::string> refusal;  // why machines refuse it (proto/op_policy.h)
};

const OpFacts& facts_of(const c10::OperatorHandle& op) {
  thread_local std::unordered_map<const c10::FunctionSchema*, OpFacts> facts;
  auto it = facts.find(&op.schema());
  if (it == facts.end()) {
    const auto& name = op.operator_name();
    it = facts
             .emplace(&op.schema(),
                      OpFacts{name.overload_name.empty() ? name.name
                                                         : name.name + "." + name.overload_name,
                              refusal_reason(op.schema())})
             .first;
  }
  return it->second;
}

}  // namespace

const std::string& op_display_name(const c10::OperatorHandle& op) {
  return facts_of(op).display_name;
}

void check_op_allowed(const c10::OperatorHandle& op) {
  const std::optional<std::string>& refusal = facts_of(op).refusal;
  TORCH_CHECK(!refusal, "mycelya: ", *refusal);
}

wire::OpRecord encode_op(const c10::OperatorHandle& op, c10::ArrayRef<c10::IValue> args,
                         const OpPlacement& placement) {
  const auto& arguments = op.schema().arguments();
  wire::OpRecord record;
  auto* values = record.mutable_args();
  values->Reserve(static_cast<int>(args.size()));
  for (size_t i = 0; i < args.size(); ++i) {
    encode_value(args[i], arguments[i].type(), placement, values->Add());
  }
  // The machine swaps the name for its interned id when the record is queued.
  record.set_op_name(op_display_name(op));
  return record;
}

}  // namespace mycelya
