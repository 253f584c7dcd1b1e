// SPDX-License-Identifier: AGPL-3.0-or-later
#include "core/generator.h"

#include <ATen/ATen.h>
#include <c10/core/GeneratorImpl.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <array>
#include <atomic>
#include <cstring>
#include <memory>
#include <mutex>

#include "core/logging.h"
#include "core/machine.h"

namespace mycelya {
namespace {

// Ids of generators made in this process; 0 names a device's default.
uint64_t next_generator_id() {
  static std::atomic<uint64_t> next{1};
  return next.fetch_add(1, std::memory_order_relaxed);
}

class RemoteGenerator final : public c10::GeneratorImpl {
 public:
  RemoteGenerator(c10::DeviceIndex index, uint64_t id, DeviceRef device)
      : c10::GeneratorImpl(c10::Device(c10::DeviceType::PrivateUse1, index),
                           c10::DispatchKeySet(c10::DispatchKey::PrivateUse1)),
        id_(id),
        entry_(std::move(device)) {}

  ~RemoteGenerator() override {
    // A generator this process made lives in its machine's session too.
    if (id_ == 0 || !entry_ || entry_->stopped.load()) return;
    try {
      entry_->machine->free_generator(id_);
    } catch (...) {
      // Destructors must not throw; the session frees it when it ends.
    }
  }

  // Lets go of `device` if this generator draws on it.
  void unbind(const DeviceRef& device) {
    std::lock_guard<std::mutex> lock(state_mu_);
    if (entry_ == device) entry_.reset();
  }

  // Makes a default generator that of a freshly started device.
  void bind(DeviceRef device, std::optional<uint64_t> seed) {
    {
      std::lock_guard<std::mutex> lock(state_mu_);
      entry_ = std::move(device);
      seed_ = c10::default_rng_seed_val;
      seed_known_ = true;
    }
    if (seed) set_current_seed(*seed);
  }

  // What ops name on the wire; throws unless `device` is this generator's.
  void encode(const DeviceEntry& device, wire::GeneratorRef* out) const {
    const DeviceRef bound = bound_device();
    TORCH_CHECK(bound.get() == &device,
                "a generator of mycelya:", static_cast<int>(device_.index()),
                " cannot be used for an op on mycelya:", static_cast<int>(device.index),
                "; use a generator of the op's device");
    out->set_device(device.slot);
    out->set_id(id_);
  }

  void set_current_seed(uint64_t seed) override {
    // A generator made on a device draws there or nowhere; a default
    // generator of an index no machine holds keeps the seed only.
    DeviceRef device = id_ != 0 ? bound_device() : nullptr;
    {
      std::lock_guard<std::mutex> lock(state_mu_);
      seed_ = seed;
      seed_known_ = true;
      if (id_ == 0) device = entry_;
    }
    if (device) device->machine->seed_generator(ref(*device), seed, device.get());
  }

  uint64_t current_seed() const override {
    {
      std::lock_guard<std::mutex> lock(state_mu_);
      if (seed_known_) return seed_;
    }
    // After set_state only the machine knows the seed the state holds.
    const DeviceRef device = bound_device();
    uint64_t seed = 0;
    device->machine->generator_state(ref(*device), &seed, device.get());
    return seed;
  }

  uint64_t seed() override {
    const uint64_t fresh = c10::detail::getNonDeterministicRandom();
    set_current_seed(fresh);
    return fresh;
  }

  void set_offset(uint64_t) override {
    TORCH_CHECK_NOT_IMPLEMENTED(false,
                                "mycelya generators do not support offsets; save and restore "
                                "their state with get_state()/set_state() instead.");
  }
  uint64_t get_offset() const override {
    TORCH_CHECK_NOT_IMPLEMENTED(false,
                                "mycelya generators do not support offsets; save and restore "
                                "their state with get_state()/set_state() instead.");
  }

  // The state is the remote generator's own (a CPU or CUDA generator state).
  c10::intrusive_ptr<c10::TensorImpl> get_state() const override {
    const DeviceRef device = bound_device();
    uint64_t seed = 0;
    const std::string bytes = device->machine->generator_state(ref(*device), &seed, device.get());
    at::Tensor state = at::empty({static_cast<int64_t>(bytes.size())}, at::kByte);
    if (!bytes.empty()) std::memcpy(state.data_ptr(), bytes.data(), bytes.size());
    return state.getIntrusivePtr();
  }

  void set_state(const c10::TensorImpl& state) override {
    TORCH_CHECK(state.dtype() == caffe2::TypeMeta::Make<uint8_t>() && state.is_cpu() &&
                    state.is_contiguous(),
                "a mycelya generator's state is the CPU uint8 tensor get_state() returned");
    const DeviceRef device = bound_device();
    std::string bytes(static_cast<const char*>(state.data()), static_cast<size_t>(state.numel()));
    device->machine->set_generator_state(ref(*device), std::move(bytes), device.get());
    std::lock_guard<std::mutex> lock(state_mu_);
    seed_known_ = false;
  }

 private:
  RemoteGenerator* clone_impl() const override {
    const DeviceRef device = bound_device();
    auto copy = std::make_unique<RemoteGenerator>(device_.index(), next_generator_id(), device);
    copy->set_state(*get_state());
    return copy.release();
  }

  wire::GeneratorRef ref(const DeviceEntry& device) const {
    wire::GeneratorRef ref;
    ref.set_device(device.slot);
    ref.set_id(id_);
    return ref;
  }

  // The device this generator draws on; throws when none is running there.
  DeviceRef bound_device() const {
    DeviceRef device;
    {
      std::lock_guard<std::mutex> lock(state_mu_);
      device = entry_;
    }
    if (!device) device = lookup_device(device_.index());  // throws: no machine there
    check_running(*device);
    return device;
  }

  const uint64_t id_;
  // Guards what follows; GeneratorImpl::mutex_ belongs to callers.
  mutable std::mutex state_mu_;
  DeviceRef entry_;  // the device this generator draws on: null for a free index's default
  uint64_t seed_ = c10::default_rng_seed_val;
  bool seed_known_ = true;
};

std::array<at::Generator, kMaxDevices>& default_generators() {
  static std::array<at::Generator, kMaxDevices>* generators = [] {
    auto* made = new std::array<at::Generator, kMaxDevices>();
    for (c10::DeviceIndex i = 0; i < kMaxDevices; ++i) {
      (*made)[i] = at::make_generator<RemoteGenerator>(i, 0, nullptr);
    }
    return made;
  }();
  return *generators;
}

// `device`, or the current device for -1.
c10::DeviceIndex checked_index(c10::DeviceIndex device) {
  if (device == -1) {
    return c10::impl::getDeviceGuardImpl(c10::DeviceType::PrivateUse1)->getDevice().index();
  }
  return checked_device_index(device);
}

std::mutex seed_mu;
std::optional<uint64_t> seed_for_new_devices;

}  // namespace

const at::Generator& default_generator(c10::DeviceIndex device) {
  return default_generators()[checked_index(device)];
}

at::Generator new_generator(c10::DeviceIndex device) {
  const c10::DeviceIndex index = checked_index(device);
  return at::make_generator<RemoteGenerator>(index, next_generator_id(), lookup_device(index));
}

void start_default_generators(const std::vector<DeviceRef>& devices) {
  std::optional<uint64_t> seed;
  {
    std::lock_guard<std::mutex> lock(seed_mu);
    seed = seed_for_new_devices;
  }
  for (const DeviceRef& device : devices) {
    default_generators()[device->index].get<RemoteGenerator>()->bind(device, seed);
  }
}

void stop_default_generators(const std::vector<DeviceRef>& devices) {
  for (const DeviceRef& device : devices) {
    default_generators()[device->index].get<RemoteGenerator>()->unbind(device);
  }
}

void seed_all(uint64_t seed) {
  {
    std::lock_guard<std::mutex> lock(seed_mu);
    seed_for_new_devices = seed;
  }
  for (const DeviceRef& device : running_devices()) {
    try {
      default_generators()[device->index].set_current_seed(seed);
    } catch (const std::exception& e) {
      // A lost or stopping machine has no stream left to seed; the others
      // (and torch.manual_seed's CPU generator after them) must still be.
      log_info("not seeding " + device->machine->id() + ": " + e.what());
    }
  }
}

void encode_generator(const std::optional<at::Generator>& generator, const DeviceEntry& device,
                      wire::GeneratorRef* out) {
  if (!generator || !generator->defined()) {
    out->set_device(device.slot);
    out->set_id(0);
    return;
  }
  TORCH_CHECK(generator->device().type() == c10::DeviceType::PrivateUse1,
              "Expected a mycelya generator for an op on mycelya:", static_cast<int>(device.index),
              ", got a ", generator->device().type(), " generator");
  generator->get<RemoteGenerator>()->encode(device, out);
}

}  // namespace mycelya
