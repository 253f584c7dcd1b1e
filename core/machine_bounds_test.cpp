// SPDX-License-Identifier: AGPL-3.0-or-later
//
// Machine against a machine that takes nothing: the gated test plugin
// (core/gated_provider.cpp), whose sessions take no batch while the test
// holds its gate closed. README's Memory paragraph promises that recording
// runs at most kMaxQueuedCommands commands, or kMaxQueuedBytes of uploads,
// ahead of the machine and then waits; and its Pausing section that a resume
// onto other devices raises and leaves the machine paused, its storages kept.
// No timing: the recorder's progress is counted, and the gate opens on a count.
#include <dlfcn.h>
#include <gtest/gtest.h>

#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/device_table.h"
#include "core/machine.h"
#include "core/plugin_loader.h"
#include "proto/mycelya.pb.h"
#include "tests/cc/gtest_helpers.h"
#include "tests/cc/wire_refs.h"

namespace mycelya {
namespace {

// The gate's controls, looked up in the plugin that load_provider loaded.
struct GateControls {
  void (*set_open)(bool) = nullptr;
  size_t (*batches)() = nullptr;
  size_t (*batch_commands)(size_t) = nullptr;
};

GateControls& controls() {
  static GateControls controls;
  return controls;
}

template <typename F>
void look_up(void* plugin, const char* name, F* target) {
  *target = reinterpret_cast<F>(dlsym(plugin, name));
  ASSERT_NE(*target, nullptr) << name << " is not in the gated plugin: " << dlerror();
}

wire::Command seed_command(uint64_t seed) {
  wire::Command command;
  command.mutable_seed()->set_seed(seed);
  command.mutable_seed()->mutable_generator()->set_device(0);
  return command;
}

wire::Upload upload_of(const wire::TensorRef& target) {
  wire::Upload upload;
  *upload.mutable_target() = target;
  return upload;
}

class GatedMachineTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string folder = runfiles_dir("core");
    ASSERT_EQ(setenv("MYCELYA_PROVIDER_PATH", folder.c_str(), 1), 0);
    load_provider("gated");
    // The same file again: dlopen hands back the loaded plugin, not a second copy.
    void* plugin =
        dlopen((folder + "/libmycelya_provider_gated.so").c_str(), RTLD_NOW | RTLD_NOLOAD);
    ASSERT_NE(plugin, nullptr) << dlerror();
    look_up(plugin, "mycelya_gated_set_open", &controls().set_open);
    look_up(plugin, "mycelya_gated_batches", &controls().batches);
    look_up(plugin, "mycelya_gated_batch_commands", &controls().batch_commands);
  }

  void TearDown() override {
    controls().set_open(true);
    for (const DeviceRef& device : running_devices()) device->machine->stop();
  }

  // Records `count` commands with `record(i)` on a thread of its own, with
  // the gate closed, and opens it once `bound` of them have returned. Returns
  // the commands of the first batch the machine takes, and sets
  // *batches_at_next to the batches sent when command `bound` + 1 returned.
  template <typename Record>
  size_t first_batch_with_gate_open_at(Machine& machine, size_t count, size_t bound, Record record,
                                       uint64_t* batches_at_next) {
    machine.synchronize();  // whatever the start queued goes first
    const size_t before = controls().batches();
    controls().set_open(false);
    std::mutex mu;
    std::condition_variable cv;
    size_t returned = 0;
    std::thread recorder([&] {
      for (size_t i = 0; i < count; ++i) {
        record(i);
        if (i == bound) *batches_at_next = machine.batches_sent();
        std::lock_guard<std::mutex> lock(mu);
        ++returned;
        cv.notify_all();
      }
    });
    {
      std::unique_lock<std::mutex> lock(mu);
      cv.wait(lock, [&] { return returned >= bound; });
    }
    controls().set_open(true);
    recorder.join();
    machine.synchronize();
    EXPECT_GT(controls().batches(), before);
    return controls().batch_commands(before);
  }
};

TEST_F(GatedMachineTest, RecordingWaitsWithKMaxQueuedCommandsQueued) {
  auto machine = std::make_shared<Machine>("gated", MachineSpec{});
  machine->start();
  uint64_t batches_at_next = 0;
  const uint64_t batches_before = machine->batches_sent();
  const size_t first = first_batch_with_gate_open_at(
      *machine, 3 * kMaxQueuedCommands, kMaxQueuedCommands,
      [&](size_t i) { machine->enqueue(seed_command(i)); }, &batches_at_next);
  // While the machine took nothing, exactly the bound queued: the gate opened
  // when that many had returned, and the next one could not join them.
  EXPECT_EQ(first, kMaxQueuedCommands);
  // That next command returned only once the machine had taken the queue.
  EXPECT_GT(batches_at_next, batches_before);
}

TEST_F(GatedMachineTest, RecordingWaitsWithKMaxQueuedBytesOfUploadsQueued) {
  auto machine = std::make_shared<Machine>("gated", MachineSpec{});
  machine->start();
  // 64 pieces of 1 MiB reach the bound (their commands' bytes count too);
  // 63 stay below it.
  constexpr size_t kPiece = kMaxQueuedBytes / 64;
  // Made beforehand, so that recording one is as quick as recording an op:
  // were the bound missing, the recorder would outrun the opening gate.
  std::vector<std::string> pieces;
  for (size_t i = 0; i < 80; ++i) pieces.emplace_back(kPiece, static_cast<char>(i));
  uint64_t batches_at_next = 0;
  const uint64_t batches_before = machine->batches_sent();
  const size_t first = first_batch_with_gate_open_at(
      *machine, pieces.size(), 64,
      [&](size_t i) {
        machine->enqueue_upload(upload_of(byte_ref(i + 1, kPiece)), std::move(pieces[i]));
      },
      &batches_at_next);
  EXPECT_EQ(first, 64u);
  EXPECT_GT(batches_at_next, batches_before);
  // Every piece arrived whole, the gate notwithstanding.
  std::string payload;
  wire::Request read;
  *read.mutable_download()->mutable_source() = byte_ref(80, kPiece);
  machine->request(read, &payload);
  EXPECT_EQ(payload, std::string(kPiece, static_cast<char>(79)));
}

TEST_F(GatedMachineTest, AResumeOntoOtherDevicesRaisesAndLeavesTheMachinePaused) {
  auto machine = std::make_shared<Machine>("gated", MachineSpec{});
  machine->start();
  const std::string bytes = "saved bytes";
  machine->enqueue_upload(upload_of(byte_ref(1, bytes.size())), bytes);
  machine->pause();

  ASSERT_EQ(setenv("MYCELYA_GATED_RESUME_DEVICES", "cuda:0,cpu", 1), 0);
  const std::string message = message_of<std::runtime_error>([&] { machine->resume(); });
  ASSERT_EQ(unsetenv("MYCELYA_GATED_RESUME_DEVICES"), 0);
  EXPECT_TRUE(Contains(message, "Could not resume machine " + machine->id()));
  EXPECT_TRUE(Contains(message, "offers [cuda:0, cpu] now but offered [cpu]"));
  EXPECT_TRUE(Contains(message, "stays paused"));
  EXPECT_TRUE(machine->paused());
  EXPECT_FALSE(machine->running());

  // Its storages were kept: a resume onto the same devices brings them back.
  machine->resume();
  EXPECT_TRUE(machine->running());
  std::string payload;
  wire::Request read;
  *read.mutable_download()->mutable_source() = byte_ref(1, bytes.size());
  machine->request(read, &payload);
  EXPECT_EQ(payload, bytes);
}

}  // namespace
}  // namespace mycelya
