// SPDX-License-Identifier: AGPL-3.0-or-later
//
// Machine tests against the real mock provider plugin, loaded by name from the
// test's runfiles exactly as the Python package loads it: every batch and
// request crosses the plugin boundary encoded.
#include "core/machine.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "core/device_table.h"
#include "core/gpu_types.h"
#include "core/plugin_loader.h"
#include "proto/mycelya.pb.h"
#include "tests/cc/gtest_helpers.h"
#include "tests/cc/wire_refs.h"

namespace mycelya {
namespace {

MachineSpec spec_with_gpu(const std::string& gpu_type, int gpu_count = 1) {
  MachineSpec spec;
  spec.gpu_type = gpu_type;
  spec.gpu_count = gpu_count;
  return spec;
}

std::string float_bytes(const std::vector<float>& values) {
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float));
}

wire::Upload upload_of(const wire::TensorRef& target) {
  wire::Upload upload;
  *upload.mutable_target() = target;
  return upload;
}

// Seeds the default generator of device slot 0: a command that touches no storage.
wire::Command seed_command(uint64_t seed) {
  wire::Command command;
  command.mutable_seed()->set_seed(seed);
  command.mutable_seed()->mutable_generator()->set_device(0);
  return command;
}

wire::Request download_request(const wire::TensorRef& source) {
  wire::Request request;
  *request.mutable_download()->mutable_source() = source;
  return request;
}

class MachineTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ASSERT_EQ(setenv("MYCELYA_PROVIDER_PATH", runfiles_dir("providers/mock").c_str(), 1), 0);
  }
  // A started machine lives until stopped (its devices hold it): stop what a
  // test left running, so every test starts with all device indices free.
  void TearDown() override {
    for (const DeviceRef& device : running_devices()) device->machine->stop();
  }
};

TEST_F(MachineTest, UnknownProviderThrowsListingMock) {
  auto machine = std::make_shared<Machine>("no-such-provider", MachineSpec{});
  const std::string message = message_of<std::invalid_argument>([&] { machine->start(); });
  EXPECT_TRUE(Contains(message, "no-such-provider"));
  EXPECT_TRUE(Contains(message, "mock"));
  EXPECT_FALSE(machine->running());

  EXPECT_TRUE(Contains(message_of<std::invalid_argument>([] { load_provider("no-such-provider"); }),
                       "mock"));
}

TEST_F(MachineTest, MockProviderLoadsByName) {
  Provider& provider = load_provider("mock");
  EXPECT_EQ(provider.name(), "mock");
  EXPECT_EQ(&load_provider("mock"), &provider);  // loaded once
}

TEST_F(MachineTest, IdNamesTheProviderAndIsUnique) {
  auto first = std::make_shared<Machine>("mock", MachineSpec{});
  auto second = std::make_shared<Machine>("mock", MachineSpec{});
  EXPECT_EQ(first->provider(), "mock");
  EXPECT_EQ(first->id().rfind("mock-", 0), 0u);
  EXPECT_NE(first->id(), second->id());
}

TEST_F(MachineTest, CpuOnlyMachineServesCpu) {
  auto machine = std::make_shared<Machine>("mock", MachineSpec{});
  EXPECT_FALSE(machine->running());
  EXPECT_TRUE(machine->devices().empty());
  machine->start();
  EXPECT_TRUE(machine->running());
  EXPECT_EQ(machine->devices(), std::vector<std::string>{"cpu"});
  EXPECT_EQ(machine->slot_of("cpu", 0), 0);
  const std::string message =
      message_of<std::invalid_argument>([&] { machine->slot_of("cuda", 0); });
  EXPECT_TRUE(Contains(message, "cuda:0"));
  EXPECT_TRUE(Contains(message, "offers: cpu"));
  EXPECT_THROW(machine->slot_of("cpu", 1), std::invalid_argument);
  machine->stop();
  EXPECT_FALSE(machine->running());
}

TEST_F(MachineTest, GpuMachineServesCudaThenCpu) {
  auto machine = std::make_shared<Machine>("mock", spec_with_gpu("H100"));
  EXPECT_EQ(machine->spec().gpu_type, "H100");
  machine->start();
  EXPECT_EQ(machine->devices(), (std::vector<std::string>{"cuda:0", "cpu"}));
  EXPECT_EQ(machine->slot_of("cuda", 0), 0);
  EXPECT_EQ(machine->slot_of("cpu", 0), 1);

  const std::string message =
      message_of<std::invalid_argument>([&] { machine->slot_of("cuda", 3); });
  EXPECT_TRUE(Contains(message, "cuda:3"));
  EXPECT_TRUE(Contains(message, "cuda:0, cpu"));
  EXPECT_TRUE(Contains(message, machine->id()));
}

TEST_F(MachineTest, GpuCountGivesThatManyCudaDevices) {
  auto machine = std::make_shared<Machine>("mock", spec_with_gpu("A100-80GB", 2));
  machine->start();
  EXPECT_EQ(machine->devices(), (std::vector<std::string>{"cuda:0", "cuda:1", "cpu"}));
  EXPECT_EQ(machine->slot_of("cuda", 1), 1);
  EXPECT_EQ(machine->slot_of("cpu", 0), 2);
}

TEST_F(MachineTest, StartTwiceIsANoOp) {
  auto machine = std::make_shared<Machine>("mock", MachineSpec{});
  machine->start();
  machine->start();
  EXPECT_TRUE(machine->running());
  machine->synchronize();
}

TEST_F(MachineTest, EnqueueBeforeStartThrows) {
  auto machine = std::make_shared<Machine>("mock", MachineSpec{});
  EXPECT_TRUE(Contains(message_of<std::runtime_error>([&] { machine->enqueue(seed_command(1)); }),
                       "not running"));
  EXPECT_THROW(machine->synchronize(), std::runtime_error);
}

TEST_F(MachineTest, EnqueueAfterStopThrows) {
  auto machine = std::make_shared<Machine>("mock", MachineSpec{});
  machine->start();
  machine->enqueue(seed_command(1));
  machine->stop();
  EXPECT_FALSE(machine->running());

  const std::string message =
      message_of<std::runtime_error>([&] { machine->enqueue(seed_command(2)); });
  EXPECT_TRUE(Contains(message, "not running"));
  EXPECT_TRUE(Contains(message, machine->id()));
  EXPECT_THROW(machine->enqueue_upload(upload_of(contiguous_ref(1, {1})), float_bytes({1.0f})),
               std::runtime_error);
  EXPECT_THROW(machine->synchronize(), std::runtime_error);
  EXPECT_THROW(machine->request(download_request(contiguous_ref(1, {1}))), std::runtime_error);
  // Frees of a stopped machine are dropped silently (tensors may die after stop).
  EXPECT_NO_THROW(machine->free_storage(1));
  // Stopping again is harmless.
  EXPECT_NO_THROW(machine->stop());
}

TEST_F(MachineTest, RestartAfterStopWorks) {
  auto machine = std::make_shared<Machine>("mock", MachineSpec{});
  machine->start();
  machine->stop();
  machine->start();
  EXPECT_TRUE(machine->running());
  machine->enqueue(seed_command(3));
  machine->synchronize();
}

TEST_F(MachineTest, SynchronizeOnARunningMachine) {
  auto machine = std::make_shared<Machine>("mock", MachineSpec{});
  machine->start();
  EXPECT_EQ(machine->batches_sent(), 0u);
  machine->synchronize();  // nothing queued: no batch
  EXPECT_EQ(machine->batches_sent(), 0u);
  machine->enqueue(seed_command(7));
  machine->synchronize();
  // One command goes in one batch, whichever of the sender and the sync
  // point takes it; an empty queue sends nothing.
  EXPECT_EQ(machine->batches_sent(), 1u);
  machine->synchronize();
  EXPECT_EQ(machine->batches_sent(), 1u);
}

TEST_F(MachineTest, CommandsQueuedWhileTheMachineIsBusyGoInOneBatch) {
  auto machine = std::make_shared<Machine>("mock", MachineSpec{});
  machine->start();
  // A matmul keeps the mock, which runs a batch as the sender submits it,
  // busy for 13 ms or more here under load; queueing the 200 commands after
  // it took at most 0.1 ms, over 100x less. So they wait behind the matmul
  // and go as one batch: two batches at most, where sending each command
  // alone would make 201.
  constexpr int64_t n = 1024;
  const std::vector<float> ones(n * n, 1.0f);
  machine->enqueue_upload(upload_of(contiguous_ref(1, {n, n})), float_bytes(ones));
  machine->synchronize();
  const uint64_t before = machine->batches_sent();
  wire::Command matmul;
  auto* record = matmul.mutable_op();
  record->set_op_name("aten::mm");
  *record->add_args()->mutable_tensor() = contiguous_ref(1, {n, n});
  *record->add_args()->mutable_tensor() = contiguous_ref(1, {n, n});
  *record->add_outputs() = contiguous_ref(2, {n, n});
  machine->enqueue(matmul);
  for (int i = 0; i < 200; ++i) machine->enqueue(seed_command(static_cast<uint64_t>(i)));
  machine->synchronize();
  EXPECT_LE(machine->batches_sent() - before, 2u);
  // The matmul ran: its first entry is a sum of n ones.
  std::string payload;
  machine->request(download_request(contiguous_ref(2, {1})), &payload);
  EXPECT_EQ(payload, float_bytes({static_cast<float>(n)}));
}

TEST_F(MachineTest, UploadThenDownloadThroughTheQueue) {
  auto machine = std::make_shared<Machine>("mock", MachineSpec{});
  machine->start();
  const std::vector<float> values = {1.5f, -2.0f, 3.25f, 4.0f};
  machine->enqueue_upload(upload_of(contiguous_ref(11, {4})), float_bytes(values));
  // The request first ships the queued upload, so it sees the bytes.
  std::string payload;
  wire::Response response = machine->request(download_request(contiguous_ref(11, {4})), &payload);
  EXPECT_FALSE(response.has_error());
  EXPECT_EQ(payload, float_bytes(values));
}

TEST_F(MachineTest, UploadsKeepTheirOwnPayloads) {
  auto machine = std::make_shared<Machine>("mock", MachineSpec{});
  machine->start();
  machine->enqueue_upload(upload_of(contiguous_ref(1, {2})), float_bytes({1.0f, 2.0f}));
  machine->enqueue_upload(upload_of(contiguous_ref(2, {3})), float_bytes({3.0f, 4.0f, 5.0f}));
  machine->synchronize();
  machine->enqueue_upload(upload_of(contiguous_ref(3, {1})), float_bytes({6.0f}));
  std::string payload;
  machine->request(download_request(contiguous_ref(2, {3})), &payload);
  EXPECT_EQ(payload, float_bytes({3.0f, 4.0f, 5.0f}));
  machine->request(download_request(contiguous_ref(3, {1})), &payload);
  EXPECT_EQ(payload, float_bytes({6.0f}));
  machine->request(download_request(contiguous_ref(1, {2})), &payload);
  EXPECT_EQ(payload, float_bytes({1.0f, 2.0f}));
}

TEST_F(MachineTest, OpsRunRemotelyInOrder) {
  auto machine = std::make_shared<Machine>("mock", MachineSpec{});
  machine->start();
  machine->enqueue_upload(upload_of(contiguous_ref(1, {3})), float_bytes({1.0f, 2.0f, 3.0f}));
  machine->enqueue_upload(upload_of(contiguous_ref(2, {3})), float_bytes({10.0f, 20.0f, 30.0f}));
  wire::Command command;
  auto* record = command.mutable_op();
  record->set_op_name("aten::add.Tensor");  // enqueue() interns it
  *record->add_args()->mutable_tensor() = contiguous_ref(1, {3});
  *record->add_args()->mutable_tensor() = contiguous_ref(2, {3});
  record->add_args()->set_double_value(2.0);
  *record->add_outputs() = contiguous_ref(3, {3});
  machine->enqueue(command);

  std::string payload;
  machine->request(download_request(contiguous_ref(3, {3})), &payload);
  EXPECT_EQ(payload, float_bytes({21.0f, 42.0f, 63.0f}));
}

TEST_F(MachineTest, PendingErrorSurfacesAtTheNextSyncPointOnce) {
  auto machine = std::make_shared<Machine>("mock", MachineSpec{});
  machine->start();
  machine->enqueue_upload(upload_of(contiguous_ref(1, {2, 3})),
                          float_bytes(std::vector<float>(6, 1.0f)));
  machine->enqueue_upload(upload_of(contiguous_ref(2, {4, 5})),
                          float_bytes(std::vector<float>(20, 1.0f)));
  wire::Command command;
  auto* record = command.mutable_op();
  record->set_op_name("aten::mm");
  *record->add_args()->mutable_tensor() = contiguous_ref(1, {2, 3});
  *record->add_args()->mutable_tensor() = contiguous_ref(2, {4, 5});
  *record->add_outputs() = contiguous_ref(3, {2, 5});
  machine->enqueue(command);

  const std::string message = message_of<std::runtime_error>([&] { machine->synchronize(); });
  EXPECT_TRUE(Contains(message, "Remote op aten::mm failed"));
  // Reported once; the machine keeps working.
  EXPECT_NO_THROW(machine->synchronize());
  EXPECT_TRUE(machine->running());
  // The failed op's output stays poisoned.
  EXPECT_TRUE(Contains(message_of<std::runtime_error>([&] {
                         machine->request(download_request(contiguous_ref(3, {2, 5})));
                       }),
                       "aten::mm"));
  // Other storages are fine.
  std::string payload;
  machine->request(download_request(contiguous_ref(1, {2, 3})), &payload);
  EXPECT_EQ(payload, float_bytes(std::vector<float>(6, 1.0f)));
}

TEST_F(MachineTest, FreesRideAlongWithTheNextBatch) {
  auto machine = std::make_shared<Machine>("mock", MachineSpec{});
  machine->start();
  // Nothing was ever queued, so the sender has never woken: the count is exact.
  machine->free_storage(1);
  machine->free_storage(2);
  // A free alone does not wake the sender.
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(machine->batches_sent(), 0u);
  // A sync point ships the frees, as one batch.
  machine->synchronize();
  EXPECT_EQ(machine->batches_sent(), 1u);
  machine->synchronize();
  EXPECT_EQ(machine->batches_sent(), 1u);
}

TEST_F(MachineTest, DevicesHoldIndicesWhileRunning) {
  auto machine = std::make_shared<Machine>("mock", spec_with_gpu("T4", 2));
  EXPECT_THROW(machine->device_index(0), std::runtime_error);
  machine->start();
  std::vector<c10::DeviceIndex> indices;
  for (int slot = 0; slot < 3; ++slot) {
    indices.push_back(machine->device_index(slot));
    const DeviceRef entry = lookup_device(indices.back());
    EXPECT_EQ(entry->machine, machine);
    EXPECT_EQ(entry->slot, slot);
    EXPECT_EQ(entry->remote_name, machine->devices()[slot]);
  }
  const DeviceRef first = lookup_device(indices[0]);
  machine->stop();
  EXPECT_TRUE(first->stopped);
  EXPECT_TRUE(Contains(message_of<c10::Error>([&] { check_running(*first); }), "not running"));
  for (c10::DeviceIndex index : indices) EXPECT_THROW(lookup_device(index), c10::Error);
  // A restart takes new entries, never the stopped ones back.
  machine->start();
  const DeviceRef again = lookup_device(machine->device_index(0));
  EXPECT_NE(again, first);
  EXPECT_FALSE(again->stopped);
  EXPECT_TRUE(first->stopped);
  machine->stop();
}

TEST_F(MachineTest, MachinesTakeTheLowestFreeIndices) {
  std::vector<std::shared_ptr<Machine>> machines;
  for (int i = 0; i < 3; ++i) {
    machines.push_back(std::make_shared<Machine>("mock", MachineSpec{}));
    machines.back()->start();
    EXPECT_EQ(machines.back()->device_index(0), i);
  }
  EXPECT_EQ(device_count(), 3);
  machines[1]->stop();
  EXPECT_EQ(device_count(), 3);  // a gap at 1
  EXPECT_EQ(running_devices().size(), 2u);
  auto next = std::make_shared<Machine>("mock", MachineSpec{});
  next->start();
  EXPECT_EQ(next->device_index(0), 1);
  for (int i = 0; i < 3 * kMaxDevices; ++i) {
    auto churn = std::make_shared<Machine>("mock", MachineSpec{});
    churn->start();
    EXPECT_EQ(churn->device_index(0), 3);
    churn->stop();
  }
}

TEST_F(MachineTest, AStaleCommandNeverReachesTheRestartedSession) {
  auto machine = std::make_shared<Machine>("mock", MachineSpec{});
  machine->start();
  const DeviceRef before = lookup_device(machine->device_index(0));
  machine->stop();
  machine->start();
  // A command made for the first run's device is refused, however late it comes.
  EXPECT_TRUE(
      Contains(message_of<c10::Error>([&] { machine->enqueue(seed_command(1), before.get()); }),
               "not running"));
  EXPECT_TRUE(Contains(message_of<c10::Error>([&] {
                         machine->request(download_request(contiguous_ref(1, {1})), nullptr,
                                          before.get());
                       }),
                       "not running"));
  EXPECT_NO_THROW(machine->enqueue(seed_command(1), lookup_device(machine->device_index(0)).get()));
}

TEST_F(MachineTest, TooManyDevicesIsAClearErrorThatLeavesNothingRunning) {
  std::vector<std::shared_ptr<Machine>> machines;
  for (int i = 0; i < kMaxDevices / 4; ++i) {
    machines.push_back(std::make_shared<Machine>("mock", spec_with_gpu("H100", 3)));
    machines.back()->start();
  }
  auto one_more = std::make_shared<Machine>("mock", MachineSpec{});
  const std::string message = message_of<std::runtime_error>([&] { one_more->start(); });
  EXPECT_TRUE(Contains(message, "the limit of 32"));
  EXPECT_TRUE(Contains(message, "needs 1 and 0"));
  EXPECT_FALSE(one_more->running());
  machines.back()->stop();
  one_more->start();  // room again
  EXPECT_TRUE(one_more->running());
  for (auto& machine : machines) machine->stop();
}

TEST_F(MachineTest, TheQueueForgetsASessionsNamesAndStorages) {
  auto machine = std::make_shared<Machine>("mock", MachineSpec{});
  machine->start();
  machine->enqueue_upload(upload_of(contiguous_ref(1, {2})), float_bytes({1.0f, 2.0f}));
  EXPECT_EQ(machine->tracked_storages(), 1u);
  machine->free_storage(1);
  EXPECT_EQ(machine->tracked_storages(), 0u);
  machine->stop();
  machine->start();
  EXPECT_EQ(machine->interned_ops(), 0u);
}

TEST_F(MachineTest, ARunningMachineLivesUntilStoppedThenGoesWithItsLastReference) {
  auto machine = std::make_shared<Machine>("mock", MachineSpec{});
  std::weak_ptr<Machine> watch = machine;
  machine->start();
  const c10::DeviceIndex index = machine->device_index(0);
  machine->enqueue(seed_command(5));
  machine->free_storage(42);
  // Its devices keep it: tensors on them may outlive the caller's reference.
  machine.reset();
  ASSERT_FALSE(watch.expired());
  lookup_device(index)->machine->stop();
  EXPECT_TRUE(watch.expired());
}

TEST(GpuTypesTest, UnknownGpuTypeListsTheValidOnes) {
  const std::string message = message_of<std::invalid_argument>([] { validate_gpu_type("X"); });
  EXPECT_TRUE(Contains(message, "'X'"));
  EXPECT_TRUE(Contains(message, "H100"));
  EXPECT_TRUE(Contains(message, "T4"));
}

TEST(GpuTypesTest, KnownAndEmptyGpuTypesAreValid) {
  EXPECT_NO_THROW(validate_gpu_type(""));
  for (const auto& type : supported_gpu_types()) EXPECT_NO_THROW(validate_gpu_type(type));
  EXPECT_THROW(validate_gpu_type("h100"), std::invalid_argument);
}

}  // namespace
}  // namespace mycelya
