// SPDX-License-Identifier: AGPL-3.0-or-later
//
// What an op's outputs look like, learned without running it: the op runs on
// meta tensors that mirror the mycelya arguments. The answer is a plan (per
// output: a new storage, an input itself, or a view of an input's storage,
// with its geometry) that is cached by the arguments' metadata, because meta
// kernels are slow (many are Python) while training loops repeat the same
// calls with the same shapes.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/ivalue.h>

#include <cstddef>
#include <memory>
#include <vector>

namespace mycelya {

struct PlannedTensor {
  enum class Kind : uint8_t { kUndefined, kNew, kInput, kView };
  Kind kind = Kind::kUndefined;
  int input = -1;  // kInput, kView: index into the call's mycelya tensors
  std::vector<int64_t> sizes;
  std::vector<int64_t> strides;
  int64_t storage_offset = 0;
  caffe2::TypeMeta dtype;
  uint64_t storage_nbytes = 0;
};

struct PlannedReturn {
  enum class Kind : uint8_t { kTensor, kTensorList, kValue };
  Kind kind = Kind::kValue;
  std::vector<PlannedTensor> tensors;  // one for kTensor
  c10::IValue value;                   // kValue (None, ints, ...)
};

struct OutputPlan {
  std::vector<PlannedReturn> returns;
};

// Plans are cached per recording thread, at most this many per thread: a
// thread that reaches the bound starts its cache afresh, so a program that
// keeps making new shapes cannot grow it without end.
constexpr size_t kMaxCachedPlans = 1 << 16;

// Plans this thread has cached: for tests of the bound.
size_t cached_plans();

// The mycelya tensors among `args`, in the order plans number them.
std::vector<at::Tensor> mycelya_inputs(c10::ArrayRef<c10::IValue> args);

// The plan for calling `op` on `args`. Throws whatever the meta kernel throws
// (data-dependent outputs, missing meta kernels, invalid arguments).
std::shared_ptr<const OutputPlan> plan_outputs(const c10::OperatorHandle& op,
                                               c10::ArrayRef<c10::IValue> args,
                                               const std::vector<at::Tensor>& inputs);

}  // namespace mycelya
