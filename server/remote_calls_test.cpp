// SPDX-License-Identifier: AGPL-3.0-or-later
//
// The executor's side of Python functions (wire::Call), with a CallRunner
// written here in place of Python: what a result names, how new storages get
// their IDs, and what a hostile client's call messages cannot do.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "proto/mycelya.pb.h"
#include "proto/tensor_geometry.h"
#include "server/executor.h"
#include "tests/cc/gtest_helpers.h"

namespace mycelya {
namespace {

class FakeRunner : public CallRunner {
 public:
  std::function<CallOutcome(std::vector<at::Tensor>)> body;
  int calls = 0;

  CallOutcome run(const std::string& function, std::vector<at::Tensor> tensors) override {
    ++calls;
    CallOutcome outcome = body(std::move(tensors));
    outcome.value = "ran " + function;
    return outcome;
  }
};

class RemoteCallsTest : public ::testing::Test {
 protected:
  RemoteCallsTest() : runner_(std::make_shared<FakeRunner>()), executor_(options(runner_)) {}

  static ExecutorOptions options(std::shared_ptr<CallRunner> runner) {
    ExecutorOptions options{{c10::Device(c10::kCPU)}, {"cpu"}, 64 << 20};
    options.calls = std::move(runner);
    return options;
  }

  void run(const std::vector<wire::Command>& commands,
           const std::vector<std::string>& payloads = {}) {
    wire::Batch batch;
    for (const wire::Command& command : commands) *batch.add_commands() = command;
    std::string encoded;
    ASSERT_TRUE(batch.SerializeToString(&encoded));
    executor_.run_batch(encoded, payloads);
  }

  wire::Response request(const wire::Request& request, std::string* payload = nullptr) {
    std::string encoded, ignored;
    EXPECT_TRUE(request.SerializeToString(&encoded));
    wire::Response response;
    EXPECT_TRUE(
        response.ParseFromString(executor_.handle_request(encoded, payload ? payload : &ignored)));
    return response;
  }

  // A request whose answer is the pending error alone.
  wire::Response sync() {
    wire::Request request_message;
    request_message.mutable_sync();
    return request(request_message);
  }

  static wire::Command call(uint64_t id, const std::vector<wire::TensorRef>& tensors) {
    wire::Command command;
    command.mutable_call()->set_call_id(id);
    command.mutable_call()->set_function("f");
    for (const wire::TensorRef& ref : tensors) *command.mutable_call()->add_tensors() = ref;
    return command;
  }

  wire::Response take(uint64_t id) {
    wire::Request request_message;
    request_message.mutable_call_result()->set_call_id(id);
    return request(request_message);
  }

  static wire::Command adopt(uint64_t id, const std::vector<uint64_t>& ids) {
    wire::Command command;
    command.mutable_adopt_call_storages()->set_call_id(id);
    for (uint64_t storage : ids) command.mutable_adopt_call_storages()->add_storage_ids(storage);
    return command;
  }

  void upload(const wire::TensorRef& ref, const at::Tensor& value) {
    wire::Command command;
    *command.mutable_upload()->mutable_target() = ref;
    command.mutable_upload()->set_payload_index(0);
    run({command}, {std::string(static_cast<const char*>(value.const_data_ptr()), value.nbytes())});
  }

  at::Tensor download(const wire::TensorRef& ref) {
    wire::Request request_message;
    *request_message.mutable_download()->mutable_source() = ref;
    std::string payload;
    wire::Response response = request(request_message, &payload);
    EXPECT_FALSE(response.has_error()) << response.error().message();
    at::Tensor out = at::empty(std::vector<int64_t>(ref.sizes().begin(), ref.sizes().end()));
    if (payload.size() == out.nbytes()) std::memcpy(out.data_ptr(), payload.data(), payload.size());
    return out;
  }

  std::shared_ptr<FakeRunner> runner_;
  Executor executor_;
};

TEST_F(RemoteCallsTest, ResultsNameArgumentStoragesOrNumberedNewOnes) {
  const wire::TensorRef x = contiguous_ref(1, {2, 3});
  upload(x, at::arange(6, at::kFloat).reshape({2, 3}));
  runner_->body = [](std::vector<at::Tensor> args) {
    at::Tensor fresh = args[0].sum(0);
    return CallOutcome{"", false, {args[0][1], fresh, fresh[1], args[0] * 2}};
  };
  run({call(1, {x})});
  wire::Response response = take(1);
  ASSERT_FALSE(response.has_error()) << response.error().message();
  const wire::CallResult& result = response.call_result();
  EXPECT_EQ(result.value(), "ran f");
  ASSERT_EQ(result.tensors_size(), 4);
  EXPECT_EQ(result.tensors(0).new_storage(), 0u);  // a view of x
  EXPECT_EQ(result.tensors(0).ref().storage_id(), 1u);
  EXPECT_EQ(result.tensors(0).ref().storage_offset(), 3);
  EXPECT_EQ(result.tensors(1).new_storage(), 1u);
  EXPECT_EQ(result.tensors(2).new_storage(), 1u);  // the same new storage, once
  EXPECT_EQ(result.tensors(3).new_storage(), 2u);
  EXPECT_EQ(result.new_storages(), 2u);

  run({adopt(1, {10, 11})});
  wire::TensorRef fresh = result.tensors(1).ref();
  fresh.set_storage_id(10);
  EXPECT_TRUE(download(fresh).equal(at::tensor({3.0f, 5.0f, 7.0f})));
  wire::TensorRef doubled = result.tensors(3).ref();
  doubled.set_storage_id(11);
  EXPECT_TRUE(download(doubled).equal(at::arange(6, at::kFloat).reshape({2, 3}) * 2));
  EXPECT_EQ(executor_.storage_count(), 3u);
}

TEST_F(RemoteCallsTest, AnotherStorageOfTheSessionComesBackAsACopy) {
  const wire::TensorRef x = contiguous_ref(1, {4});
  const wire::TensorRef kept = contiguous_ref(2, {4});
  upload(kept, at::ones({4}));
  at::Tensor remembered;
  // The first call keeps storage 2's tensor (as a Python global could); the
  // second returns it without naming storage 2 among its arguments.
  runner_->body = [&](std::vector<at::Tensor> args) {
    remembered = args[0];
    return CallOutcome{};
  };
  run({call(1, {kept})});
  EXPECT_FALSE(take(1).has_error());
  runner_->body = [&](std::vector<at::Tensor>) { return CallOutcome{"", false, {remembered}}; };
  run({call(2, {x})});
  wire::Response response = take(2);
  ASSERT_EQ(response.call_result().tensors_size(), 1);
  EXPECT_EQ(response.call_result().tensors(0).new_storage(), 1u);
}

TEST_F(RemoteCallsTest, CallIdsMustRiseAndResultsAreTakenOnce) {
  runner_->body = [](std::vector<at::Tensor>) { return CallOutcome{}; };
  run({call(5, {})});
  run({call(5, {})});
  EXPECT_TRUE(Contains(sync().pending_error().message(), "not numbered after"));
  EXPECT_EQ(runner_->calls, 1);
  EXPECT_FALSE(take(5).has_error());
  EXPECT_TRUE(Contains(take(5).error().message(), "no result of call 5"));
  EXPECT_TRUE(Contains(take(99).error().message(), "no result of call 99"));
}

TEST_F(RemoteCallsTest, AdoptionRefusesUsedDuplicateOrMissingIds) {
  const wire::TensorRef x = contiguous_ref(1, {2});
  runner_->body = [](std::vector<at::Tensor>) {
    return CallOutcome{"", false, {at::ones({2}), at::zeros({2})}};
  };
  for (uint64_t id : {1, 2, 3, 4}) run({call(id, {x})});
  for (uint64_t id : {1, 2, 3, 4}) ASSERT_EQ(take(id).call_result().new_storages(), 2u);
  run({adopt(1, {1, 20})});  // 1 is x's
  EXPECT_TRUE(Contains(sync().pending_error().message(), "already in use"));
  run({adopt(2, {21, 21})});
  EXPECT_TRUE(Contains(sync().pending_error().message(), "already in use"));
  run({adopt(3, {22})});
  EXPECT_TRUE(Contains(sync().pending_error().message(), "not 1"));
  run({adopt(3, {22, 23})});  // refused already: nothing waits any more
  EXPECT_TRUE(Contains(sync().pending_error().message(), "no new storages"));
  run({adopt(4, {24, 25})});
  EXPECT_FALSE(sync().has_pending_error());
  EXPECT_EQ(executor_.storage_count(), 3u);
}

TEST_F(RemoteCallsTest, ResultsOnOtherDevicesOrSparseAreRefused) {
  const wire::TensorRef x = contiguous_ref(1, {2});
  runner_->body = [](std::vector<at::Tensor>) {
    return CallOutcome{"", false, {at::empty({2}, at::TensorOptions().device(at::kMeta))}};
  };
  run({call(1, {x})});
  EXPECT_TRUE(Contains(take(1).error().message(), "not a device of this session"));
  runner_->body = [](std::vector<at::Tensor>) {
    return CallOutcome{"", false, {at::ones({2, 2}).to_sparse()}};
  };
  run({call(2, {x})});
  EXPECT_TRUE(Contains(take(2).error().message(), "only dense tensors"));
}

TEST_F(RemoteCallsTest, BadArgumentsAndAMissingRunnerFailTheCallOnly) {
  runner_->body = [](std::vector<at::Tensor>) { return CallOutcome{}; };
  wire::TensorRef bad = contiguous_ref(1, {4});
  bad.set_device(3);
  run({call(1, {bad})});
  EXPECT_TRUE(Contains(take(1).error().message(), "device slot 3"));
  EXPECT_EQ(runner_->calls, 0);

  Executor without(ExecutorOptions{{c10::Device(c10::kCPU)}, {"cpu"}, 64 << 20});
  wire::Batch batch;
  *batch.add_commands() = call(1, {});
  std::string encoded, answer, payload;
  batch.SerializeToString(&encoded);
  without.run_batch(encoded, std::vector<std::string>{});
  wire::Request take_request;
  take_request.mutable_call_result()->set_call_id(1);
  take_request.SerializeToString(&encoded);
  wire::Response response;
  response.ParseFromString(without.handle_request(encoded, &payload));
  EXPECT_TRUE(Contains(response.error().message(), "does not run Python functions"));
  EXPECT_FALSE(response.has_pending_error());
}

}  // namespace
}  // namespace mycelya
