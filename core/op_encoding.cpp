// SPDX-License-Identifier: AGPL-3.0-or-later
#include "core/op_encoding.h"

#include <c10/util/Exception.h>

#include <cstring>
#include <unordered_map>

#include "core/remote_tensor.h"

namespace mycelya {
namespace {

std::string device_name(c10::DeviceIndex index) {
  return "mycelya:" + std::to_string(static_cast<int>(index));
}

void add_tensor(const at::Tensor& tensor, OpPlacement& placement, bool& saw_cpu_tensor,
                std::string& cpu_device) {
  if (!tensor.defined()) return;
  if (tensor.is_privateuseone()) {
    placement.add(tensor.device().index());
  } else if (tensor.dim() != 0) {
    // Zero-dim CPU tensors are scalars and may travel with remote ones.
    saw_cpu_tensor = true;
    cpu_device = tensor.device().str();
  }
}

}  // namespace

void check_same_machine(c10::DeviceIndex a, const DeviceEntry& a_entry, c10::DeviceIndex b,
                        const DeviceEntry& b_entry) {
  TORCH_CHECK(a_entry.machine == b_entry.machine,
              "Cross-machine remote transfers are not supported: an op mixes ", device_name(a),
              " (machine ", a_entry.machine->id(), ") and ", device_name(b), " (machine ",
              b_entry.machine->id(), "). Copy through the CPU with .cpu() first.");
}

void OpPlacement::add(c10::DeviceIndex index) {
  if (device == index) return;
  if (device < 0) {
    device = index;
    entry = lookup_device(index);
    return;
  }
  check_same_machine(device, entry, index, lookup_device(index));
  TORCH_CHECK(false,
              "Expected all tensors to be on the same device, but found at least two "
              "devices, ",
              device_name(device), " and ", device_name(index), "!");
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
      placement.add(arg.toDevice().index());
    }
  }
  TORCH_CHECK(placement.device >= 0, "mycelya: ", op_display_name(op),
              " was dispatched to mycelya without a mycelya tensor or device.");
  TORCH_CHECK(!saw_cpu_tensor,
              "Expected all tensors to be on the same device, but found at least two devices, ",
              device_name(placement.device), " and ", cpu_device, "! (in ", op_display_name(op),
              "; move the CPU tensor with .to(device) first)");
  return placement;
}

void encode_value(const c10::IValue& value, const OpPlacement& placement, wire::Value* out) {
  if (value.isNone()) {
    out->set_none(true);
  } else if (value.isTensor()) {
    const at::Tensor& tensor = value.toTensor();
    if (!tensor.defined()) {
      out->set_none(true);
    } else if (tensor.is_privateuseone()) {
      // The op's own device is already looked up; only copies span two devices.
      const c10::DeviceIndex device = tensor.device().index();
      encode_tensor_ref(
          tensor, device == placement.device ? placement.entry.slot : lookup_device(device).slot,
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
      encode_value(item, placement, list->add_values());
    }
  } else if (value.isDevice()) {
    const c10::Device device = value.toDevice();
    TORCH_CHECK(device.is_privateuseone(), "mycelya: device argument ", device,
                " cannot be sent to a remote machine.");
    out->set_device(lookup_device(device.index()).slot);
  } else if (value.isGenerator()) {
    TORCH_CHECK_NOT_IMPLEMENTED(
        false,
        "mycelya: explicit torch.Generator arguments are not supported; seed the remote "
        "generator with torch.manual_seed instead.");
  } else {
    TORCH_CHECK_NOT_IMPLEMENTED(false, "mycelya: cannot send an argument of type ", value.tagKind(),
                                " to a remote machine.");
  }
}

const std::string& op_display_name(const c10::OperatorHandle& op) {
  // Built once per op and thread: every queued record carries the name.
  thread_local std::unordered_map<const c10::FunctionSchema*, std::string> names;
  auto it = names.find(&op.schema());
  if (it == names.end()) {
    const auto& name = op.operator_name();
    it = names
             .emplace(&op.schema(),
                      name.overload_name.empty() ? name.name : name.name + "." + name.overload_name)
             .first;
  }
  return it->second;
}

wire::OpRecord encode_op(const c10::OperatorHandle& op, c10::ArrayRef<c10::IValue> args,
                         const OpPlacement& placement) {
  wire::OpRecord record;
  auto* values = record.mutable_args();
  values->Reserve(static_cast<int>(args.size()));
  for (const auto& arg : args) encode_value(arg, placement, values->Add());
  // The machine swaps the name for its interned id when the record is queued.
  record.set_op_name(op_display_name(op));
  return record;
}

}  // namespace mycelya
