// SPDX-License-Identifier: AGPL-3.0-or-later
//
// The meta-plan cache's bound (README's Memory paragraph: 65,536 meta plans
// per recording thread). Plans for aten::zeros on the meta device: each size
// is a new key, and no machine is needed.
#include "core/meta_inference.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <thread>
#include <vector>

namespace mycelya {
namespace {

void plan_zeros_of_size(int64_t size) {
  static const c10::OperatorHandle zeros =
      c10::Dispatcher::singleton().findSchemaOrThrow("aten::zeros", "");
  // zeros(SymInt[] size, *, ScalarType? dtype, Layout? layout, Device? device, bool? pin_memory)
  const std::vector<c10::IValue> args = {c10::IValue(std::vector<int64_t>{size}), c10::IValue(),
                                         c10::IValue(), c10::IValue(c10::Device(c10::kMeta)),
                                         c10::IValue()};
  const auto plan = plan_outputs(zeros, args, {});
  ASSERT_EQ(plan->returns.size(), 1u);
  ASSERT_EQ(plan->returns[0].tensors.at(0).sizes, std::vector<int64_t>{size});
}

TEST(MetaPlanCache, HoldsAtMostKMaxCachedPlansPerThread) {
  EXPECT_EQ(kMaxCachedPlans, 65536u);  // the number README gives
  EXPECT_EQ(cached_plans(), 0u);
  for (size_t size = 0; size < kMaxCachedPlans; ++size) plan_zeros_of_size(size);
  EXPECT_EQ(cached_plans(), kMaxCachedPlans);
  plan_zeros_of_size(0);  // a hit adds nothing
  EXPECT_EQ(cached_plans(), kMaxCachedPlans);
  // New plans past the bound: the cache never holds more than it.
  for (size_t size = kMaxCachedPlans; size < kMaxCachedPlans + 100; ++size) {
    plan_zeros_of_size(size);
    ASSERT_LE(cached_plans(), kMaxCachedPlans);
  }
  EXPECT_GE(cached_plans(), 1u);  // the newest plans are cached again

  // Another thread has a cache of its own.
  std::thread other([] {
    EXPECT_EQ(cached_plans(), 0u);
    plan_zeros_of_size(1);
    EXPECT_EQ(cached_plans(), 1u);
  });
  other.join();
}

}  // namespace
}  // namespace mycelya
