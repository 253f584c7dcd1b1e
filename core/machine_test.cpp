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

#include "core/gpu_types.h"
#include "core/plugin_loader.h"
#include "proto/mycelya.pb.h"
#include "tests/cc/gtest_helpers.h"
#include "tests/cc/wire_refs.h"

namespace mycelya {
namespace {

// The runfiles folder of a package of this workspace.
std::string runfiles_dir(const std::string& package) {
  const char* srcdir = std::getenv("TEST_SRCDIR");
  const char* workspace = std::getenv("TEST_WORKSPACE");
  if (srcdir == nullptr || workspace == nullptr) return package;
  return std::string(srcdir) + "/" + workspace + "/" + package;
}

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

wire::Command seed_command(uint64_t seed) {
  wire::Command command;
  command.mutable_seed()->set_seed(seed);
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
};

TEST_F(MachineTest, UnknownProviderThrowsListingMock) {
  Machine machine("no-such-provider", MachineSpec{});
  const std::string message = message_of<std::invalid_argument>([&] { machine.start(); });
  EXPECT_TRUE(Contains(message, "no-such-provider"));
  EXPECT_TRUE(Contains(message, "mock"));
  EXPECT_FALSE(machine.running());

  EXPECT_TRUE(Contains(message_of<std::invalid_argument>([] { load_provider("no-such-provider"); }),
                       "mock"));
}

TEST_F(MachineTest, MockProviderLoadsByName) {
  Provider& provider = load_provider("mock");
  EXPECT_EQ(provider.name(), "mock");
  EXPECT_EQ(&load_provider("mock"), &provider);  // loaded once
}

TEST_F(MachineTest, IdNamesTheProviderAndIsUnique) {
  Machine first("mock", MachineSpec{});
  Machine second("mock", MachineSpec{});
  EXPECT_EQ(first.provider(), "mock");
  EXPECT_EQ(first.id().rfind("mock-", 0), 0u);
  EXPECT_NE(first.id(), second.id());
}

TEST_F(MachineTest, CpuOnlyMachineServesCpu) {
  Machine machine("mock", MachineSpec{});
  EXPECT_FALSE(machine.running());
  EXPECT_TRUE(machine.devices().empty());
  machine.start();
  EXPECT_TRUE(machine.running());
  EXPECT_EQ(machine.devices(), std::vector<std::string>{"cpu"});
  EXPECT_EQ(machine.slot_of("cpu", 0), 0);
  const std::string message =
      message_of<std::invalid_argument>([&] { machine.slot_of("cuda", 0); });
  EXPECT_TRUE(Contains(message, "cuda:0"));
  EXPECT_TRUE(Contains(message, "offers: cpu"));
  EXPECT_THROW(machine.slot_of("cpu", 1), std::invalid_argument);
  machine.stop();
  EXPECT_FALSE(machine.running());
}

TEST_F(MachineTest, GpuMachineServesCudaThenCpu) {
  Machine machine("mock", spec_with_gpu("H100"));
  EXPECT_EQ(machine.spec().gpu_type, "H100");
  machine.start();
  EXPECT_EQ(machine.devices(), (std::vector<std::string>{"cuda:0", "cpu"}));
  EXPECT_EQ(machine.slot_of("cuda", 0), 0);
  EXPECT_EQ(machine.slot_of("cpu", 0), 1);

  const std::string message =
      message_of<std::invalid_argument>([&] { machine.slot_of("cuda", 3); });
  EXPECT_TRUE(Contains(message, "cuda:3"));
  EXPECT_TRUE(Contains(message, "cuda:0, cpu"));
  EXPECT_TRUE(Contains(message, machine.id()));
}

TEST_F(MachineTest, GpuCountGivesThatManyCudaDevices) {
  Machine machine("mock", spec_with_gpu("A100-80GB", 2));
  machine.start();
  EXPECT_EQ(machine.devices(), (std::vector<std::string>{"cuda:0", "cuda:1", "cpu"}));
  EXPECT_EQ(machine.slot_of("cuda", 1), 1);
  EXPECT_EQ(machine.slot_of("cpu", 0), 2);
}

TEST_F(MachineTest, StartTwiceIsANoOp) {
  Machine machine("mock", MachineSpec{});
  machine.start();
  machine.start();
  EXPECT_TRUE(machine.running());
  machine.synchronize();
}

TEST_F(MachineTest, EnqueueBeforeStartThrows) {
  Machine machine("mock", MachineSpec{});
  EXPECT_TRUE(Contains(message_of<std::runtime_error>([&] { machine.enqueue(seed_command(1)); }),
                       "not running"));
  EXPECT_THROW(machine.synchronize(), std::runtime_error);
}

TEST_F(MachineTest, EnqueueAfterStopThrows) {
  Machine machine("mock", MachineSpec{});
  machine.start();
  machine.enqueue(seed_command(1));
  machine.stop();
  EXPECT_FALSE(machine.running());

  const std::string message =
      message_of<std::runtime_error>([&] { machine.enqueue(seed_command(2)); });
  EXPECT_TRUE(Contains(message, "not running"));
  EXPECT_TRUE(Contains(message, machine.id()));
  EXPECT_THROW(machine.enqueue_upload(upload_of(contiguous_ref(1, {1})), float_bytes({1.0f})),
               std::runtime_error);
  EXPECT_THROW(machine.synchronize(), std::runtime_error);
  EXPECT_THROW(machine.request(download_request(contiguous_ref(1, {1}))), std::runtime_error);
  // Frees of a stopped machine are dropped silently (tensors may die after stop).
  EXPECT_NO_THROW(machine.free_storage(1));
  // Stopping again is harmless.
  EXPECT_NO_THROW(machine.stop());
}

TEST_F(MachineTest, RestartAfterStopWorks) {
  Machine machine("mock", MachineSpec{});
  machine.start();
  machine.stop();
  machine.start();
  EXPECT_TRUE(machine.running());
  machine.enqueue(seed_command(3));
  machine.synchronize();
}

TEST_F(MachineTest, SynchronizeOnARunningMachine) {
  Machine machine("mock", MachineSpec{});
  machine.start();
  EXPECT_EQ(machine.batches_sent(), 0u);
  machine.synchronize();  // nothing queued: no batch
  EXPECT_EQ(machine.batches_sent(), 0u);
  machine.enqueue(seed_command(7));
  machine.synchronize();
  EXPECT_GE(machine.batches_sent(), 1u);
  machine.synchronize();
}

TEST_F(MachineTest, ManyCommandsCoalesceIntoFewerBatches) {
  Machine machine("mock", MachineSpec{});
  machine.start();
  for (int i = 0; i < 200; ++i) machine.enqueue(seed_command(static_cast<uint64_t>(i)));
  machine.synchronize();
  EXPECT_GE(machine.batches_sent(), 1u);
  EXPECT_LE(machine.batches_sent(), 200u);
}

TEST_F(MachineTest, UploadThenDownloadThroughTheQueue) {
  Machine machine("mock", MachineSpec{});
  machine.start();
  const std::vector<float> values = {1.5f, -2.0f, 3.25f, 4.0f};
  machine.enqueue_upload(upload_of(contiguous_ref(11, {4})), float_bytes(values));
  // The request first ships the queued upload, so it sees the bytes.
  std::string payload;
  wire::Response response = machine.request(download_request(contiguous_ref(11, {4})), &payload);
  EXPECT_FALSE(response.has_error());
  EXPECT_EQ(response.version(), static_cast<uint32_t>(wire::PROTOCOL_VERSION_CURRENT));
  EXPECT_EQ(payload, float_bytes(values));
}

TEST_F(MachineTest, UploadsKeepTheirOwnPayloads) {
  Machine machine("mock", MachineSpec{});
  machine.start();
  machine.enqueue_upload(upload_of(contiguous_ref(1, {2})), float_bytes({1.0f, 2.0f}));
  machine.enqueue_upload(upload_of(contiguous_ref(2, {3})), float_bytes({3.0f, 4.0f, 5.0f}));
  machine.synchronize();
  machine.enqueue_upload(upload_of(contiguous_ref(3, {1})), float_bytes({6.0f}));
  std::string payload;
  machine.request(download_request(contiguous_ref(2, {3})), &payload);
  EXPECT_EQ(payload, float_bytes({3.0f, 4.0f, 5.0f}));
  machine.request(download_request(contiguous_ref(3, {1})), &payload);
  EXPECT_EQ(payload, float_bytes({6.0f}));
  machine.request(download_request(contiguous_ref(1, {2})), &payload);
  EXPECT_EQ(payload, float_bytes({1.0f, 2.0f}));
}

TEST_F(MachineTest, OpsRunRemotelyInOrder) {
  Machine machine("mock", MachineSpec{});
  machine.start();
  machine.enqueue_upload(upload_of(contiguous_ref(1, {3})), float_bytes({1.0f, 2.0f, 3.0f}));
  machine.enqueue_upload(upload_of(contiguous_ref(2, {3})), float_bytes({10.0f, 20.0f, 30.0f}));
  wire::Command command;
  auto* record = command.mutable_op();
  record->set_op_name("aten::add.Tensor");  // enqueue() interns it
  *record->add_args()->mutable_tensor() = contiguous_ref(1, {3});
  *record->add_args()->mutable_tensor() = contiguous_ref(2, {3});
  record->add_args()->set_double_value(2.0);
  *record->add_outputs() = contiguous_ref(3, {3});
  machine.enqueue(command);

  std::string payload;
  machine.request(download_request(contiguous_ref(3, {3})), &payload);
  EXPECT_EQ(payload, float_bytes({21.0f, 42.0f, 63.0f}));
}

TEST_F(MachineTest, PendingErrorSurfacesAtTheNextSyncPointOnce) {
  Machine machine("mock", MachineSpec{});
  machine.start();
  machine.enqueue_upload(upload_of(contiguous_ref(1, {2, 3})),
                         float_bytes(std::vector<float>(6, 1.0f)));
  machine.enqueue_upload(upload_of(contiguous_ref(2, {4, 5})),
                         float_bytes(std::vector<float>(20, 1.0f)));
  wire::Command command;
  auto* record = command.mutable_op();
  record->set_op_name("aten::mm");
  *record->add_args()->mutable_tensor() = contiguous_ref(1, {2, 3});
  *record->add_args()->mutable_tensor() = contiguous_ref(2, {4, 5});
  *record->add_outputs() = contiguous_ref(3, {2, 5});
  machine.enqueue(command);

  const std::string message = message_of<std::runtime_error>([&] { machine.synchronize(); });
  EXPECT_TRUE(Contains(message, "Remote op aten::mm failed"));
  // Reported once; the machine keeps working.
  EXPECT_NO_THROW(machine.synchronize());
  EXPECT_TRUE(machine.running());
  // The failed op's output stays poisoned.
  EXPECT_TRUE(Contains(message_of<std::runtime_error>([&] {
                         machine.request(download_request(contiguous_ref(3, {2, 5})));
                       }),
                       "aten::mm"));
  // Other storages are fine.
  std::string payload;
  machine.request(download_request(contiguous_ref(1, {2, 3})), &payload);
  EXPECT_EQ(payload, float_bytes(std::vector<float>(6, 1.0f)));
}

TEST_F(MachineTest, FreesRideAlongWithTheNextBatch) {
  Machine machine("mock", MachineSpec{});
  machine.start();
  // Nothing was ever queued, so the sender has never woken: the count is exact.
  machine.free_storage(1);
  machine.free_storage(2);
  // A free alone does not wake the sender.
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(machine.batches_sent(), 0u);
  // A sync point ships the frees, as one batch.
  machine.synchronize();
  EXPECT_EQ(machine.batches_sent(), 1u);
  machine.synchronize();
  EXPECT_EQ(machine.batches_sent(), 1u);
}

TEST_F(MachineTest, OpNamesAreInternedPerSession) {
  Machine machine("mock", MachineSpec{});
  machine.start();
  const std::string add = "aten::add.Tensor", mul = "aten::mul.Tensor";
  bool first_use = false;
  const uint32_t add_id = machine.intern_op(add, &first_use);
  EXPECT_TRUE(first_use);
  EXPECT_EQ(machine.intern_op(add, &first_use), add_id);
  EXPECT_FALSE(first_use);
  const uint32_t mul_id = machine.intern_op(mul, &first_use);
  EXPECT_TRUE(first_use);
  EXPECT_NE(mul_id, add_id);
  EXPECT_NE(add_id, 0u);
  EXPECT_NE(mul_id, 0u);

  // A new session knows no names yet.
  machine.stop();
  machine.start();
  machine.intern_op(add, &first_use);
  EXPECT_TRUE(first_use);
}

TEST_F(MachineTest, DestroyingARunningMachineStopsIt) {
  auto machine = std::make_unique<Machine>("mock", MachineSpec{});
  machine->start();
  machine->enqueue(seed_command(5));
  machine->free_storage(42);
  EXPECT_NO_THROW(machine.reset());
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
