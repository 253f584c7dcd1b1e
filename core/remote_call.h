// SPDX-License-Identifier: AGPL-3.0-or-later
//
// The client's side of Python functions run on a machine
// (@mycelya_torch.remote): a call is queued like an op, its tensors by
// reference, and its result is taken later, when the caller needs it. The
// pickling, and what the bytes mean, is mycelya_torch/_remote_runtime.py's.
#pragma once

#include <ATen/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include "core/device_table.h"

namespace mycelya {

struct QueuedCall {
  DeviceRef device;  // one device of the machine that runs the call
  uint64_t call_id = 0;
  // The argument tensors: a result that views one of their storages is made
  // a view of it here too.
  std::vector<at::Tensor> tensors;
};

struct CallResult {
  std::string value;
  bool raised = false;
  std::vector<at::Tensor> tensors;  // mycelya tensors on the call's machine
};

// Queues `function` on the machine of `device_index` (the device of every
// tensor must belong to it; throws std::invalid_argument otherwise).
QueuedCall queue_call(std::string function, std::vector<at::Tensor> tensors,
                      c10::DeviceIndex device_index);

// Waits for the call's outcome. Throws std::runtime_error when the call could
// not run (or the machine failed); an exception inside the function is a
// result with `raised`.
CallResult take_call_result(const QueuedCall& call);

}  // namespace mycelya
