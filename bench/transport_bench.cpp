// SPDX-License-Identifier: AGPL-3.0-or-later
//
// The client and transport, measured through core's Machine on a real
// provider (default local-cuda: a mycelya-server child over gRPC):
//   BM_RecordSmallOp   client-side cost of one small op through the dispatcher
//   BM_TinyOps         ops per second through the server (queued, then one sync)
//   BM_Upload/Download bandwidth for 1 MiB .. 1 GiB
//
//   bazel run -c opt //bench:transport_bench
//   MYCELYA_BENCH_PROVIDER=mock bazel run -c opt //bench:transport_bench
#include <ATen/ATen.h>
#include <benchmark/benchmark.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <memory>

#include "core/device_table.h"
#include "core/machine.h"
#include "core/payload_pool.h"
#include "core/plugin_loader.h"
#include "proto/tensor_geometry.h"

namespace mycelya {
namespace {

std::shared_ptr<Machine> machine() {
  static std::shared_ptr<Machine> m = [] {
    // Providers and mycelya-server sit in the package folder of the runfiles.
    char cwd[4096];
    if (getcwd(cwd, sizeof(cwd))) add_plugin_dir(std::string(cwd) + "/python/mycelya_torch");
    const char* provider = std::getenv("MYCELYA_BENCH_PROVIDER");
    auto created = std::make_shared<Machine>(provider ? provider : "local-cuda", MachineSpec{});
    created->start();
    return created;
  }();
  return m;
}

// The machine's cpu device: its slot in TensorRefs.
int cpu_slot() { return machine()->slot_of("cpu", 0); }

void BM_RecordSmallOp(benchmark::State& state) {
  const auto device = machine()->device_index(cpu_slot());
  at::Tensor x = at::zeros({16}, at::TensorOptions().device(c10::DeviceType::PrivateUse1, device));
  for (int i = 0; i < 100; ++i) x = x + 1;  // warm the plan cache
  for (auto _ : state) {
    x = x + 1;
  }
  machine()->synchronize();
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_RecordSmallOp);

void BM_TinyOps(benchmark::State& state) {
  const int64_t ops = state.range(0);
  const int slot = cpu_slot();
  for (auto _ : state) {
    for (int64_t i = 0; i < ops; ++i) {
      wire::Command command;
      auto* op = command.mutable_op();
      op->set_op_name("aten::add.Tensor");
      *op->add_args()->mutable_tensor() = contiguous_ref(1, {16}, c10::kFloat, slot);
      *op->add_args()->mutable_tensor() = contiguous_ref(1, {16}, c10::kFloat, slot);
      op->add_args()->set_int_value(1);
      *op->add_outputs() = contiguous_ref(2 + i % 64, {16}, c10::kFloat, slot);
      machine()->enqueue(std::move(command));
    }
    machine()->synchronize();
  }
  state.SetItemsProcessed(state.iterations() * ops);
}
BENCHMARK(BM_TinyOps)->Arg(10000)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_Upload(benchmark::State& state) {
  const int64_t bytes = state.range(0);
  const std::string source(bytes, '\1');
  const wire::TensorRef target = contiguous_ref(100, {bytes / 4}, c10::kFloat, cpu_slot());
  for (auto _ : state) {
    wire::Upload upload;
    *upload.mutable_target() = target;
    // As copy_kernels does: the tensor's bytes copied into a pooled buffer.
    std::string payload = payload_pool().acquire(bytes);
    std::memcpy(payload.data(), source.data(), bytes);
    machine()->enqueue_upload(std::move(upload), std::move(payload));
    machine()->synchronize();
  }
  state.SetBytesProcessed(state.iterations() * bytes);
  wire::Command free;
  free.mutable_free()->add_storage_ids(100);
  machine()->enqueue(std::move(free));
}
BENCHMARK(BM_Upload)
    ->RangeMultiplier(16)
    ->Range(1 << 20, 1 << 30)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

void BM_Download(benchmark::State& state) {
  const int64_t bytes = state.range(0);
  const wire::TensorRef stored = contiguous_ref(200, {bytes / 4}, c10::kFloat, cpu_slot());
  {
    wire::Upload upload;
    *upload.mutable_target() = stored;
    machine()->enqueue_upload(std::move(upload), std::string(bytes, '\2'));
  }
  for (auto _ : state) {
    wire::Request request;
    *request.mutable_download()->mutable_source() = stored;
    // As copy_kernels does: received into a pooled buffer, returned when done.
    std::string payload = payload_pool().acquire(bytes);
    machine()->request(std::move(request), &payload);
    if (static_cast<int64_t>(payload.size()) != bytes) state.SkipWithError("short download");
    payload_pool().release(std::move(payload));
  }
  state.SetBytesProcessed(state.iterations() * bytes);
  wire::Command free;
  free.mutable_free()->add_storage_ids(200);
  machine()->enqueue(std::move(free));
}
BENCHMARK(BM_Download)
    ->RangeMultiplier(16)
    ->Range(1 << 20, 1 << 30)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace
}  // namespace mycelya

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  mycelya::machine();  // start the machine outside every measurement
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
