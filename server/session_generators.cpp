// SPDX-License-Identifier: AGPL-3.0-or-later
#include "server/session_generators.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <c10/core/GeneratorImpl.h>
#include <c10/util/Exception.h>

#include <mutex>

namespace mycelya {

SessionGenerators::SessionGenerators(std::vector<c10::Device> devices)
    : devices_(std::move(devices)), defaults_(devices_.size()) {}

at::Generator SessionGenerators::make(c10::Device device) const {
  if (device.is_cuda()) return at::detail::getCUDAHooks().getNewGenerator(device.index());
  TORCH_CHECK(device.is_cpu(), "no random generator for device ", device);
  return at::make_generator<at::CPUGeneratorImpl>(c10::default_rng_seed_val);
}

int SessionGenerators::checked_slot(int32_t slot) const {
  TORCH_CHECK(slot >= 0 && slot < static_cast<int32_t>(devices_.size()), "device slot ", slot,
              " does not exist on this machine");
  return slot;
}

at::Generator SessionGenerators::get(const wire::GeneratorRef& ref) {
  const int slot = checked_slot(ref.device());
  if (ref.id() == 0) {
    at::Generator& generator = defaults_[slot];
    if (!generator.defined()) generator = make(devices_[slot]);
    return generator;
  }
  auto it = made_.find(ref.id());
  if (it == made_.end()) {
    TORCH_CHECK(made_.size() < kMaxClientGenerators, "a session may hold at most ",
                kMaxClientGenerators, " random generators of its own; free unused ones");
    it = made_.emplace(ref.id(), Made{slot, make(devices_[slot])}).first;
  }
  TORCH_CHECK(it->second.slot == slot, "generator ", ref.id(), " belongs to device slot ",
              it->second.slot, ", not ", slot);
  return it->second.generator;
}

void SessionGenerators::free(uint64_t id) { made_.erase(id); }

}  // namespace mycelya
