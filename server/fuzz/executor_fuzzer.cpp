// SPDX-License-Identifier: AGPL-3.0-or-later
//
// libFuzzer target: the server's decoding and execution path, as a hostile
// client with a valid token reaches it. Each input (server/fuzz/fuzz_case.h)
// is a Batch with its payloads and a Request, run by a fresh executor that
// has a small memory budget and two devices, as a session would run them.
// Any crash, sanitizer report, or leak is a finding; exceptions are not,
// since the executor turns them into errors for the client.
//
// tools/fuzz.sh builds it (clang-14, -fsanitize=fuzzer,address,undefined)
// and runs it on the committed seed corpus (server/fuzz/corpus).
#include <ATen/Parallel.h>
#include <google/protobuf/stubs/logging.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "server/executor.h"
#include "server/fuzz/fuzz_case.h"

namespace {

std::shared_ptr<mycelya::MemoryBudget> budget() {
  // One budget for every input, as a server has: an input that leaked a
  // charge would show up as budget lost for the next ones.
  static auto shared = std::make_shared<mycelya::MemoryBudget>(256u << 20);
  return shared;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  // One thread: a report's stack then names the op that caused it.
  at::set_num_threads(1);
  // As mycelya-server does: no log line per invalid UTF-8 string parsed.
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const mycelya::FuzzCase input = mycelya::decode_fuzz_case(data, size);
  mycelya::ExecutorOptions options;
  // Slot 0 named like a GPU, as the mock provider emulates one.
  options.devices = {c10::Device(c10::kCPU), c10::Device(c10::kCPU)};
  options.device_names = {"cuda:0", "cpu"};
  options.memory_limit_bytes = 64u << 20;
  options.server_budget = budget();
  options.max_storages = 4096;
  {
    mycelya::Executor executor(options);
    if (!input.batch.empty()) executor.run_batch(input.batch, input.payloads);
    if (!input.request.empty()) {
      std::string payload;
      executor.handle_request(input.request, &payload);
    }
  }
  if (budget()->used() != 0) __builtin_trap();  // a session's charges outlived it
  return 0;
}
