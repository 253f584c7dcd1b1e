// SPDX-License-Identifier: AGPL-3.0-or-later
//
// Executor throughput for tiny ops: batches of N `aten::add.Tensor` records on
// 16-element tensors, decoded and run as the mock provider would.
//   bazel run -c opt //bench:executor_bench
#include <benchmark/benchmark.h>

#include "proto/mycelya.pb.h"
#include "proto/tensor_geometry.h"
#include "server/executor.h"

namespace mycelya {
namespace {

void BM_TinyAddOps(benchmark::State& state) {
  Executor executor({{c10::Device(c10::kCPU)}, {"cpu"}, 0});
  const int ops = static_cast<int>(state.range(0));
  wire::Batch batch;
  for (int i = 0; i < ops; ++i) {
    auto* op = batch.add_commands()->mutable_op();
    op->set_op_id(1);
    if (i == 0) op->set_op_name("aten::add.Tensor");
    *op->add_args()->mutable_tensor() = contiguous_ref(1, {16});
    *op->add_args()->mutable_tensor() = contiguous_ref(1, {16});
    op->add_args()->set_int_value(1);
    *op->add_outputs() = contiguous_ref(2 + i % 64, {16});
  }
  std::string encoded;
  batch.SerializeToString(&encoded);
  for (auto _ : state) executor.run_batch(encoded, {});
  state.SetItemsProcessed(state.iterations() * ops);
}
BENCHMARK(BM_TinyAddOps)->Arg(1)->Arg(64)->Arg(1024);

}  // namespace
}  // namespace mycelya

BENCHMARK_MAIN();
