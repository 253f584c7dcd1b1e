// SPDX-License-Identifier: AGPL-3.0-or-later
//
// Turning a boxed ATen call into a wire::OpRecord: where it runs (placement,
// with the device checks PyTorch users expect) and how its arguments encode.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/ivalue.h>

#include "core/device_table.h"
#include "proto/mycelya.pb.h"

namespace mycelya {

// The one mycelya device an op runs on.
struct OpPlacement {
  c10::DeviceIndex device = -1;
  DeviceEntry entry;

  // Adds a tensor's or device argument's device. Throws c10::Error when
  // devices of two machines meet ("Cross-machine remote transfers are not
  // supported") or two devices of one machine meet.
  void add(c10::DeviceIndex index);
};

// Throws c10::Error ("Cross-machine remote transfers are not supported")
// unless both devices belong to one machine.
void check_same_machine(c10::DeviceIndex a, const DeviceEntry& a_entry, c10::DeviceIndex b,
                        const DeviceEntry& b_entry);

// Finds the placement of a call from its arguments; also refuses CPU tensors
// that are not zero-dimensional scalars, as PyTorch does for cuda.
OpPlacement place_op(const c10::OperatorHandle& op, c10::ArrayRef<c10::IValue> args);

// Encodes one argument.
void encode_value(const c10::IValue& value, const OpPlacement& placement, wire::Value* out);

// A record for `op` on `placement`'s machine: its name (the machine interns it
// when the record is queued) and the encoded arguments.
wire::OpRecord encode_op(const c10::OperatorHandle& op, c10::ArrayRef<c10::IValue> args,
                         const OpPlacement& placement);

const std::string& op_display_name(const c10::OperatorHandle& op);

}  // namespace mycelya
