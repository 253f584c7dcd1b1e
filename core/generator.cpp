// SPDX-License-Identifier: AGPL-3.0-or-later
#include "core/generator.h"

#include <ATen/ATen.h>
#include <ATen/core/GeneratorForPrivateuseone.h>
#include <c10/core/GeneratorImpl.h>

#include <array>
#include <cstring>
#include <mutex>

#include "core/device_table.h"

namespace mycelya {
namespace {

constexpr uint64_t kDefaultSeed = 67280421310721ull;  // PyTorch's default

class RemoteGenerator final : public c10::GeneratorImpl {
 public:
  explicit RemoteGenerator(c10::DeviceIndex device)
      : c10::GeneratorImpl(c10::Device(c10::DeviceType::PrivateUse1, device),
                           c10::DispatchKeySet(c10::DispatchKey::PrivateUse1)) {}

  void set_current_seed(uint64_t seed) override {
    seed_ = seed;
    if (device_.index() >= registered_device_count()) return;
    DeviceEntry entry = lookup_device(device_.index());
    if (!entry.machine->running()) return;
    wire::Command command;
    command.mutable_seed()->set_seed(seed);
    entry.machine->enqueue(std::move(command));
  }
  uint64_t current_seed() const override { return seed_; }
  uint64_t seed() override {
    const uint64_t fresh = c10::detail::getNonDeterministicRandom();
    set_current_seed(fresh);
    return fresh;
  }
  void set_offset(uint64_t) override {}
  uint64_t get_offset() const override { return 0; }

  // The state is the seed: enough for torch.random.fork_rng and friends.
  void set_state(const c10::TensorImpl& state) override {
    TORCH_CHECK(state.numel() * state.itemsize() == sizeof(uint64_t),
                "mycelya generator state must be 8 bytes");
    uint64_t seed;
    std::memcpy(&seed, state.data(), sizeof(seed));
    set_current_seed(seed);
  }
  c10::intrusive_ptr<c10::TensorImpl> get_state() const override {
    at::Tensor state = at::empty({sizeof(uint64_t)}, at::kByte);
    std::memcpy(state.data_ptr(), &seed_, sizeof(seed_));
    return state.getIntrusivePtr();
  }

 private:
  RemoteGenerator* clone_impl() const override {
    auto* copy = new RemoteGenerator(device_.index());
    copy->seed_ = seed_;
    return copy;
  }

  uint64_t seed_ = kDefaultSeed;
};

}  // namespace

const at::Generator& default_generator(c10::DeviceIndex device) {
  static std::array<at::Generator, kMaxDevices> generators;
  static std::once_flag once;
  std::call_once(once, [] {
    for (c10::DeviceIndex i = 0; i < kMaxDevices; ++i) {
      generators[i] = at::make_generator<RemoteGenerator>(i);
    }
  });
  const c10::DeviceIndex index =
      device < 0 ? c10::impl::getDeviceGuardImpl(c10::DeviceType::PrivateUse1)->getDevice().index()
                 : device;
  TORCH_CHECK(index < kMaxDevices, "mycelya:", static_cast<int>(index), " does not exist");
  return generators[index];
}

}  // namespace mycelya
