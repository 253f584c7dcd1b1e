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
  DeviceRef entry;  // null until a mycelya tensor or device argument is seen

  c10::DeviceIndex device() const { return entry->index; }

  // Adds a device the op touches. Throws c10::Error when devices of two
  // machines meet ("... on different remote devices ...") or
  // two devices of one machine meet.
  void add(const DeviceRef& device);
};

// Throws c10::Error ("Cannot perform operations between tensors on different
// remote devices ...", naming both devices and their machines) unless both
// are one machine's.
void check_same_machine(const DeviceEntry& a, const DeviceEntry& b);

// Finds the placement of a call from its arguments; also refuses CPU tensors
// that are not zero-dimensional scalars, as PyTorch does for cuda.
OpPlacement place_op(const c10::OperatorHandle& op, c10::ArrayRef<c10::IValue> args);

// Encodes one argument of schema type `type`.
void encode_value(const c10::IValue& value, const c10::TypePtr& type, const OpPlacement& placement,
                  wire::Value* out);

// A record for `op` on `placement`'s machine: its name (the machine interns it
// when the record is queued) and the encoded arguments.
wire::OpRecord encode_op(const c10::OperatorHandle& op, c10::ArrayRef<c10::IValue> args,
                         const OpPlacement& placement);

const std::string& op_display_name(const c10::OperatorHandle& op);

// Throws (RuntimeError in Python) for an op no machine runs (proto/op_policy.h),
// before anything is queued or allocated for it.
void check_op_allowed(const c10::OperatorHandle& op);

}  // namespace mycelya
