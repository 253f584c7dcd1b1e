// SPDX-License-Identifier: AGPL-3.0-or-later
//
// Executor tests: every batch and request is built by hand as the client would
// build it, encoded, fed to the executor, and every response decoded, so the
// wire protocol is exercised exactly as it travels.
#include "server/executor.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "proto/mycelya.pb.h"
#include "tests/cc/gtest_helpers.h"
#include "tests/cc/wire_refs.h"

namespace mycelya {
namespace {

constexpr uint64_t kMiB = 1ull << 20;

wire::TensorRef make_ref(uint64_t storage_id, uint64_t storage_nbytes,
                         const std::vector<int64_t>& sizes, const std::vector<int64_t>& strides,
                         int64_t storage_offset, at::ScalarType dtype, int device = 0) {
  wire::TensorRef ref;
  ref.set_storage_id(storage_id);
  ref.set_storage_nbytes(storage_nbytes);
  ref.mutable_sizes()->Add(sizes.begin(), sizes.end());
  ref.mutable_strides()->Add(strides.begin(), strides.end());
  ref.set_storage_offset(storage_offset);
  ref.set_dtype(static_cast<int32_t>(dtype));
  ref.set_device(device);
  return ref;
}

wire::TensorRef ref_for(uint64_t storage_id, const at::Tensor& tensor) {
  return contiguous_ref(storage_id, tensor.sizes().vec(), tensor.scalar_type());
}

wire::Value tensor_value(const wire::TensorRef& ref) {
  wire::Value value;
  *value.mutable_tensor() = ref;
  return value;
}

wire::Value double_value(double d) {
  wire::Value value;
  value.set_double_value(d);
  return value;
}

wire::Value int_list_value(const std::vector<int64_t>& values) {
  wire::Value value;
  value.mutable_int_list()->mutable_values()->Add(values.begin(), values.end());
  return value;
}

wire::OpRecord op_record(uint32_t op_id, const std::string& name, std::vector<wire::Value> args,
                         std::vector<wire::TensorRef> outputs) {
  wire::OpRecord record;
  record.set_op_id(op_id);
  if (!name.empty()) record.set_op_name(name);
  for (auto& arg : args) *record.add_args() = std::move(arg);
  for (auto& out : outputs) *record.add_outputs() = std::move(out);
  return record;
}

std::string bytes_of(const at::Tensor& tensor) {
  at::Tensor contiguous = tensor.contiguous();
  return std::string(static_cast<const char*>(contiguous.const_data_ptr()), contiguous.nbytes());
}

at::Tensor tensor_from(const std::string& bytes, const wire::TensorRef& ref) {
  std::vector<int64_t> sizes(ref.sizes().begin(), ref.sizes().end());
  at::Tensor tensor =
      at::empty(sizes, at::TensorOptions().dtype(static_cast<at::ScalarType>(ref.dtype())));
  EXPECT_EQ(bytes.size(), tensor.nbytes());
  if (bytes.size() == tensor.nbytes()) std::memcpy(tensor.data_ptr(), bytes.data(), bytes.size());
  return tensor;
}

// Builds a batch command by command, then runs it.
class BatchBuilder {
 public:
  BatchBuilder& upload(const wire::TensorRef& target, std::string payload) {
    auto* upload = batch_.add_commands()->mutable_upload();
    *upload->mutable_target() = target;
    upload->set_payload_index(static_cast<uint32_t>(payloads_.size()));
    payloads_.push_back(std::move(payload));
    return *this;
  }
  BatchBuilder& op(wire::OpRecord record) {
    *batch_.add_commands()->mutable_op() = std::move(record);
    return *this;
  }
  BatchBuilder& free(const std::vector<uint64_t>& ids) {
    batch_.add_commands()->mutable_free()->mutable_storage_ids()->Add(ids.begin(), ids.end());
    return *this;
  }
  BatchBuilder& resize(uint64_t storage_id, uint64_t nbytes, int device = 0) {
    auto* resize = batch_.add_commands()->mutable_resize();
    resize->set_storage_id(storage_id);
    resize->set_nbytes(nbytes);
    resize->set_device(device);
    return *this;
  }
  BatchBuilder& seed(uint64_t seed, int device = 0, uint64_t generator = 0) {
    auto* command = batch_.add_commands()->mutable_seed();
    command->set_seed(seed);
    command->mutable_generator()->set_device(device);
    command->mutable_generator()->set_id(generator);
    return *this;
  }

  void run(Executor& executor) {
    std::string encoded;
    ASSERT_TRUE(batch_.SerializeToString(&encoded));
    executor.run_batch(encoded, payloads_);
  }

 private:
  wire::Batch batch_;
  std::vector<std::string> payloads_;
};

void upload_to(Executor& executor, uint64_t storage_id, const at::Tensor& tensor) {
  BatchBuilder().upload(ref_for(storage_id, tensor), bytes_of(tensor)).run(executor);
}

class ExecutorTest : public ::testing::Test {
 protected:
  explicit ExecutorTest(uint64_t memory_limit_bytes = 256 * kMiB)
      : executor_(ExecutorOptions{{c10::Device(c10::kCPU)}, {"cpu"}, memory_limit_bytes}) {}

  wire::Response request(const wire::Request& request, std::string* payload = nullptr) {
    std::string encoded;
    EXPECT_TRUE(request.SerializeToString(&encoded));
    std::string ignored;
    const std::string answer = executor_.handle_request(encoded, payload ? payload : &ignored);
    wire::Response response;
    EXPECT_TRUE(response.ParseFromString(answer));
    return response;
  }

  wire::Response sync() {
    wire::Request req;
    req.mutable_sync();
    return request(req);
  }

  wire::Response download_response(const wire::TensorRef& ref, std::string* payload) {
    wire::Request req;
    *req.mutable_download()->mutable_source() = ref;
    return request(req, payload);
  }

  // Downloads `ref`, expecting success and no pending error.
  at::Tensor download(const wire::TensorRef& ref) {
    std::string payload;
    wire::Response response = download_response(ref, &payload);
    EXPECT_FALSE(response.has_error()) << response.error().message();
    EXPECT_FALSE(response.has_pending_error()) << response.pending_error().message();
    return tensor_from(payload, ref);
  }

  wire::Response execute(wire::OpRecord record) {
    wire::Request req;
    *req.mutable_execute()->mutable_op() = std::move(record);
    return request(req);
  }

  void upload(uint64_t storage_id, const at::Tensor& tensor) {
    upload_to(executor_, storage_id, tensor);
  }

  Executor executor_;
};

class SmallExecutorTest : public ExecutorTest {
 protected:
  SmallExecutorTest() : ExecutorTest(1 * kMiB) {}
};

TEST_F(ExecutorTest, ZeroMemoryLimitMeansTheDefault) {
  EXPECT_EQ(executor_.options().memory_limit_bytes, 256 * kMiB);
  Executor defaulted(ExecutorOptions{{c10::Device(c10::kCPU)}, {"cpu"}, 0});
  EXPECT_GT(defaulted.options().memory_limit_bytes, 0u);
}

TEST_F(ExecutorTest, UploadThenDownloadReturnsTheSameBytes) {
  at::Tensor source = at::arange(24, at::kDouble).reshape({2, 3, 4}) * 1.5;
  const std::string bytes = bytes_of(source);
  BatchBuilder().upload(ref_for(1, source), bytes).run(executor_);
  EXPECT_EQ(executor_.storage_count(), 1u);
  EXPECT_EQ(executor_.bytes_in_use(), bytes.size());

  std::string payload;
  wire::Response response = download_response(ref_for(1, source), &payload);
  EXPECT_FALSE(response.has_error()) << response.error().message();
  EXPECT_FALSE(response.has_pending_error()) << response.pending_error().message();
  EXPECT_EQ(payload, bytes);
}

TEST_F(ExecutorTest, UploadOfIntegersRoundTrips) {
  at::Tensor source = at::tensor({int64_t{-3}, int64_t{1} << 40, int64_t{7}}, at::kLong);
  upload(2, source);
  EXPECT_TRUE(at::equal(download(ref_for(2, source)), source));
}

TEST_F(ExecutorTest, UploadWithTheWrongByteCountIsAPendingError) {
  at::Tensor source = at::ones({4}, at::kFloat);
  BatchBuilder().upload(ref_for(3, source), std::string(5, '\0')).run(executor_);
  wire::Response response = sync();
  ASSERT_TRUE(response.has_pending_error());
  EXPECT_TRUE(Contains(response.pending_error().message(), "carries 5 bytes"));
  EXPECT_FALSE(sync().has_pending_error());
  // The storage made for it (not zeroed: the upload was to fill it) is gone,
  // and the tensor raises instead of showing whatever memory it got.
  EXPECT_EQ(executor_.storage_count(), 0u);
  std::string payload;
  wire::Response read = download_response(ref_for(3, source), &payload);
  ASSERT_TRUE(read.has_error());
  EXPECT_TRUE(Contains(read.error().message(), "upload that should have written this tensor"));
}

TEST_F(ExecutorTest, AddWritesItsOutputStorage) {
  at::Tensor a = at::randn({3, 4});
  at::Tensor b = at::randn({3, 4});
  upload(1, a);
  upload(2, b);
  BatchBuilder()
      .op(op_record(1, "aten::add.Tensor",
                    {tensor_value(ref_for(1, a)), tensor_value(ref_for(2, b)), double_value(2.5)},
                    {contiguous_ref(3, {3, 4}, at::kFloat)}))
      .run(executor_);

  at::Tensor result = download(contiguous_ref(3, {3, 4}, at::kFloat));
  EXPECT_TRUE(at::allclose(result, at::add(a, b, 2.5)));
  EXPECT_EQ(executor_.storage_count(), 3u);
  EXPECT_EQ(executor_.bytes_in_use(), 3u * 12 * sizeof(float));
}

TEST_F(ExecutorTest, InternedOpIdNeedsNoName) {
  at::Tensor a = at::randn({5});
  at::Tensor b = at::randn({5});
  upload(1, a);
  upload(2, b);
  const wire::TensorRef ra = ref_for(1, a), rb = ref_for(2, b);
  const wire::TensorRef r3 = contiguous_ref(3, {5}, at::kFloat);
  const wire::TensorRef r4 = contiguous_ref(4, {5}, at::kFloat);
  BatchBuilder()
      .op(op_record(7, "aten::add.Tensor", {tensor_value(ra), tensor_value(rb), double_value(1.0)},
                    {r3}))
      .run(executor_);
  // The second use carries only the id, in a later batch.
  BatchBuilder()
      .op(op_record(7, "", {tensor_value(r3), tensor_value(ra), double_value(-2.0)}, {r4}))
      .run(executor_);
  EXPECT_FALSE(sync().has_pending_error());
  EXPECT_TRUE(at::allclose(download(r4), at::add(at::add(a, b), a, -2.0)));
}

TEST_F(ExecutorTest, UnnamedOpIdIsAPendingError) {
  at::Tensor a = at::randn({2});
  upload(1, a);
  BatchBuilder()
      .op(op_record(9, "", {tensor_value(ref_for(1, a))}, {contiguous_ref(2, {2}, at::kFloat)}))
      .run(executor_);
  wire::Response response = sync();
  ASSERT_TRUE(response.has_pending_error());
  EXPECT_TRUE(Contains(response.pending_error().message(), "before it was named"));
}

TEST_F(ExecutorTest, ViewRefsAddressTheRightElements) {
  at::Tensor base = at::arange(24, at::kFloat).reshape({4, 6});
  upload(1, base);
  const uint64_t nbytes = 24 * sizeof(float);
  // A transposed, offset view: 3 rows by 2 columns starting at element 7.
  const wire::TensorRef view = make_ref(1, nbytes, {3, 2}, {1, 6}, 7, at::kFloat);
  at::Tensor expected = base.as_strided({3, 2}, {1, 6}, 7);
  EXPECT_TRUE(at::equal(download(view), expected));

  // Ops read views through the same geometry.
  BatchBuilder()
      .op(op_record(1, "aten::neg", {tensor_value(view)}, {contiguous_ref(2, {3, 2}, at::kFloat)}))
      .run(executor_);
  EXPECT_TRUE(at::equal(download(contiguous_ref(2, {3, 2}, at::kFloat)), -expected));

  // ... and write them: an output that is a strided view of a bigger storage.
  const wire::TensorRef out_view = make_ref(3, nbytes, {3, 2}, {1, 6}, 7, at::kFloat);
  upload(3, at::zeros({4, 6}));
  BatchBuilder().op(op_record(1, "", {tensor_value(view)}, {out_view})).run(executor_);
  at::Tensor written = download(contiguous_ref(3, {4, 6}, at::kFloat));
  at::Tensor expected_written = at::zeros({4, 6});
  expected_written.as_strided({3, 2}, {1, 6}, 7).copy_(-expected);
  EXPECT_TRUE(at::equal(written, expected_written));
}

TEST_F(ExecutorTest, FailedOpReportsOncePoisonsItsOutputAndSparesOthers) {
  at::Tensor a = at::randn({2, 3});
  at::Tensor b = at::randn({4, 5});
  upload(1, a);
  upload(2, b);
  const wire::TensorRef out = contiguous_ref(3, {2, 5}, at::kFloat);
  BatchBuilder()
      .op(op_record(1, "aten::mm", {tensor_value(ref_for(1, a)), tensor_value(ref_for(2, b))},
                    {out}))
      .run(executor_);

  wire::Response first = sync();
  ASSERT_TRUE(first.has_pending_error());
  EXPECT_EQ(first.pending_error().op_name(), "aten::mm");
  EXPECT_FALSE(first.pending_error().message().empty());
  EXPECT_FALSE(first.has_error());

  wire::Response second = sync();
  EXPECT_FALSE(second.has_pending_error());
  EXPECT_FALSE(second.has_error());

  std::string payload;
  wire::Response poisoned = download_response(out, &payload);
  ASSERT_TRUE(poisoned.has_error());
  EXPECT_TRUE(Contains(poisoned.error().message(), "aten::mm"));
  EXPECT_FALSE(poisoned.has_pending_error());

  EXPECT_TRUE(at::equal(download(ref_for(1, a)), a));
  EXPECT_TRUE(at::equal(download(ref_for(2, b)), b));
}

TEST_F(ExecutorTest, PoisonSpreadsWithoutANewPendingError) {
  at::Tensor a = at::randn({2, 3});
  at::Tensor b = at::randn({4, 5});
  upload(1, a);
  upload(2, b);
  const wire::TensorRef bad = contiguous_ref(3, {2, 5}, at::kFloat);
  const wire::TensorRef derived = contiguous_ref(4, {2, 5}, at::kFloat);
  BatchBuilder()
      .op(op_record(1, "aten::mm", {tensor_value(ref_for(1, a)), tensor_value(ref_for(2, b))},
                    {bad}))
      .op(op_record(2, "aten::neg", {tensor_value(bad)}, {derived}))
      .run(executor_);
  wire::Response first = sync();
  ASSERT_TRUE(first.has_pending_error());
  EXPECT_EQ(first.pending_error().op_name(), "aten::mm");
  EXPECT_FALSE(sync().has_pending_error());

  std::string payload;
  wire::Response response = download_response(derived, &payload);
  ASSERT_TRUE(response.has_error());
  EXPECT_TRUE(Contains(response.error().message(), "aten::mm"));
}

TEST_F(ExecutorTest, OnlyTheFirstErrorIsPending) {
  at::Tensor a = at::randn({2, 3});
  upload(1, a);
  const wire::TensorRef ra = ref_for(1, a);
  BatchBuilder()
      .op(op_record(1, "aten::mm", {tensor_value(ra), tensor_value(ra)},
                    {contiguous_ref(2, {2, 3}, at::kFloat)}))
      .op(op_record(2, "aten::no_such_op", {}, {}))
      .run(executor_);
  wire::Response response = sync();
  ASSERT_TRUE(response.has_pending_error());
  EXPECT_EQ(response.pending_error().op_name(), "aten::mm");
  EXPECT_FALSE(sync().has_pending_error());
}

TEST_F(ExecutorTest, ExecuteNonzeroReturnsTheRealShape) {
  at::Tensor source = at::tensor({0.0f, 1.0f, 0.0f, 2.0f, 3.0f});
  upload(1, source);
  wire::TensorRef reserved;
  reserved.set_storage_id(2);
  const uint64_t before = executor_.bytes_in_use();
  wire::Response response =
      execute(op_record(1, "aten::nonzero", {tensor_value(ref_for(1, source))}, {reserved}));
  ASSERT_FALSE(response.has_error()) << response.error().message();
  ASSERT_EQ(response.outputs_size(), 1);
  ASSERT_EQ(response.outputs(0).kind_case(), wire::OutputInfo::kTensor);
  const wire::TensorRef& info = response.outputs(0).tensor();
  EXPECT_EQ(info.storage_id(), 2u);
  EXPECT_EQ(std::vector<int64_t>(info.sizes().begin(), info.sizes().end()),
            (std::vector<int64_t>{3, 1}));
  EXPECT_EQ(info.dtype(), static_cast<int32_t>(at::kLong));
  EXPECT_EQ(info.device(), 0);
  EXPECT_EQ(executor_.bytes_in_use(), before + info.storage_nbytes());

  at::Tensor indices = download(info);
  EXPECT_TRUE(at::equal(indices, at::nonzero(source)));
}

TEST_F(ExecutorTest, ExecuteReturnsScalarsAndInputViews) {
  at::Tensor source = at::tensor({1.0f, 2.0f, 3.0f});
  upload(1, source);
  // aten::equal returns a bool.
  wire::Response equal = execute(op_record(
      1, "aten::equal", {tensor_value(ref_for(1, source)), tensor_value(ref_for(1, source))}, {}));
  ASSERT_FALSE(equal.has_error()) << equal.error().message();
  ASSERT_EQ(equal.outputs_size(), 1);
  ASSERT_EQ(equal.outputs(0).kind_case(), wire::OutputInfo::kValue);
  EXPECT_TRUE(equal.outputs(0).value().bool_value());

  // A view of the input comes back as that input plus a geometry.
  wire::Value dim1;
  dim1.set_int_value(1);
  wire::Response unsqueezed =
      execute(op_record(2, "aten::unsqueeze", {tensor_value(ref_for(1, source)), dim1}, {}));
  ASSERT_FALSE(unsqueezed.has_error()) << unsqueezed.error().message();
  ASSERT_EQ(unsqueezed.outputs_size(), 1);
  EXPECT_EQ(unsqueezed.outputs(0).kind_case(), wire::OutputInfo::kInputIndex);
  EXPECT_EQ(unsqueezed.outputs(0).input_index(), 0);
  EXPECT_EQ(std::vector<int64_t>(unsqueezed.outputs(0).view().sizes().begin(),
                                 unsqueezed.outputs(0).view().sizes().end()),
            (std::vector<int64_t>{3, 1}));
}

TEST_F(ExecutorTest, FailedExecuteIsThisRequestsError) {
  at::Tensor a = at::randn({2, 3});
  upload(1, a);
  wire::TensorRef reserved;
  reserved.set_storage_id(2);
  wire::Response response = execute(op_record(
      1, "aten::mm", {tensor_value(ref_for(1, a)), tensor_value(ref_for(1, a))}, {reserved}));
  ASSERT_TRUE(response.has_error());
  EXPECT_EQ(response.error().op_name(), "aten::mm");
  EXPECT_FALSE(response.has_pending_error());
  EXPECT_FALSE(sync().has_pending_error());
}

TEST_F(ExecutorTest, FreeDropsBytesInUse) {
  at::Tensor a = at::randn({1000});
  at::Tensor b = at::randn({10});
  upload(1, a);
  upload(2, b);
  EXPECT_EQ(executor_.bytes_in_use(), 1010 * sizeof(float));
  EXPECT_EQ(executor_.storage_count(), 2u);

  BatchBuilder().free({1, 12345}).run(executor_);  // unknown IDs are ignored
  EXPECT_EQ(executor_.bytes_in_use(), 10 * sizeof(float));
  EXPECT_EQ(executor_.storage_count(), 1u);
  EXPECT_FALSE(sync().has_pending_error());
  EXPECT_TRUE(at::equal(download(ref_for(2, b)), b));
}

TEST_F(ExecutorTest, StorageAKernelResizedIsUncountedByWhatWasCounted) {
  at::Tensor a = at::randn({3, 4});
  upload(1, a);
  upload(2, a);
  // add.out grows the empty out storage inside the kernel, behind the
  // executor's back; freeing it must not take more than was counted.
  BatchBuilder()
      .op(op_record(1, "aten::add.out",
                    {tensor_value(ref_for(1, a)), tensor_value(ref_for(2, a)), double_value(1.0),
                     tensor_value(contiguous_ref(3, {0}, at::kFloat))},
                    {contiguous_ref(3, {3, 4}, at::kFloat)}))
      .run(executor_);
  wire::Response response = sync();
  ASSERT_FALSE(response.has_pending_error()) << response.pending_error().message();
  BatchBuilder().free({1, 2, 3}).run(executor_);
  EXPECT_EQ(executor_.storage_count(), 0u);
  EXPECT_EQ(executor_.bytes_in_use(), 0u);
}

TEST_F(SmallExecutorTest, OpOutputBeyondTheLimitIsRefused) {
  EXPECT_EQ(executor_.options().memory_limit_bytes, kMiB);
  at::Tensor small = at::arange(4, at::kFloat);
  upload(1, small);
  const uint64_t before = executor_.bytes_in_use();
  EXPECT_EQ(before, 16u);

  // repeat to 1024 x 4096 floats: 16 MiB, far beyond the limit.
  const wire::TensorRef out = contiguous_ref(2, {1024, 4096}, at::kFloat);
  BatchBuilder()
      .op(op_record(1, "aten::repeat",
                    {tensor_value(ref_for(1, small)), int_list_value({1024, 1024})}, {out}))
      .run(executor_);
  EXPECT_EQ(executor_.bytes_in_use(), before);

  wire::Response response = sync();
  ASSERT_TRUE(response.has_pending_error());
  EXPECT_EQ(response.pending_error().op_name(), "aten::repeat");
  EXPECT_TRUE(Contains(response.pending_error().message(), "out of memory"));
  EXPECT_EQ(executor_.bytes_in_use(), before);

  std::string payload;
  EXPECT_TRUE(download_response(out, &payload).has_error());
  EXPECT_EQ(executor_.bytes_in_use(), before);

  // What fits still runs.
  const wire::TensorRef fits = contiguous_ref(3, {2, 4}, at::kFloat);
  BatchBuilder()
      .op(op_record(1, "", {tensor_value(ref_for(1, small)), int_list_value({2, 1})}, {fits}))
      .run(executor_);
  EXPECT_TRUE(at::equal(download(fits), small.repeat({2, 1})));
  EXPECT_EQ(executor_.bytes_in_use(), before + 32);
}

TEST_F(SmallExecutorTest, UploadBeyondTheLimitIsRefused) {
  at::Tensor big = at::zeros({2 * static_cast<int64_t>(kMiB)}, at::kByte);
  upload(1, big);
  EXPECT_EQ(executor_.bytes_in_use(), 0u);
  wire::Response response = sync();
  ASSERT_TRUE(response.has_pending_error());
  EXPECT_TRUE(Contains(response.pending_error().message(), "out of memory"));
}

TEST_F(ExecutorTest, ResizeStorageKeepsTheLeadingBytes) {
  at::Tensor source = at::tensor({1.0f, 2.0f, 3.0f, 4.0f});
  upload(1, source);
  EXPECT_EQ(executor_.bytes_in_use(), 16u);

  BatchBuilder().resize(1, 32).run(executor_);
  EXPECT_FALSE(sync().has_pending_error());
  EXPECT_EQ(executor_.bytes_in_use(), 32u);
  EXPECT_TRUE(at::equal(download(make_ref(1, 32, {4}, {1}, 0, at::kFloat)), source));
  // The grown storage takes views that reach into the new bytes.
  BatchBuilder()
      .upload(make_ref(1, 32, {4}, {1}, 4, at::kFloat), bytes_of(source * 10))
      .run(executor_);
  EXPECT_TRUE(at::equal(download(make_ref(1, 32, {8}, {1}, 0, at::kFloat)),
                        at::cat({source, source * 10})));

  BatchBuilder().resize(1, 8).run(executor_);
  EXPECT_FALSE(sync().has_pending_error());
  EXPECT_EQ(executor_.bytes_in_use(), 8u);
  EXPECT_TRUE(at::equal(download(make_ref(1, 8, {2}, {1}, 0, at::kFloat)), source.slice(0, 0, 2)));

  // A view beyond the shrunk storage is refused.
  std::string payload;
  wire::Response response = download_response(make_ref(1, 8, {4}, {1}, 0, at::kFloat), &payload);
  ASSERT_TRUE(response.has_error());
  EXPECT_TRUE(Contains(response.error().message(), "too few"));
}

TEST_F(ExecutorTest, UploadingAWholePoisonedTensorMakesItValidAgain) {
  at::Tensor a = at::randn({2, 3});
  at::Tensor b = at::randn({4, 5});
  upload(1, a);
  upload(2, b);
  // The failed op's output storage was never created.
  const wire::TensorRef out = contiguous_ref(3, {2, 5}, at::kFloat);
  BatchBuilder()
      .op(op_record(1, "aten::mm", {tensor_value(ref_for(1, a)), tensor_value(ref_for(2, b))},
                    {out}))
      .run(executor_);
  ASSERT_TRUE(sync().has_pending_error());

  at::Tensor fresh = at::randn({2, 5});
  upload(3, fresh);
  EXPECT_FALSE(sync().has_pending_error());
  EXPECT_TRUE(at::equal(download(out), fresh));
}

TEST_F(SmallExecutorTest, ShrinkingNearTheLimitNeedsNoRoom) {
  at::Tensor big = at::zeros({600 * 1024}, at::kByte);
  upload(1, big);
  BatchBuilder().resize(1, 500 * 1024).run(executor_);
  wire::Response response = sync();
  EXPECT_FALSE(response.has_pending_error()) << response.pending_error().message();
  EXPECT_EQ(executor_.bytes_in_use(), 500u * 1024);
}

TEST_F(SmallExecutorTest, OutOfMemoryMessageUsesReadableUnits) {
  at::Tensor big = at::zeros({2 * static_cast<int64_t>(kMiB)}, at::kByte);
  upload(1, big);
  wire::Response response = sync();
  ASSERT_TRUE(response.has_pending_error());
  EXPECT_TRUE(Contains(response.pending_error().message(), "2.00 MiB requested"))
      << response.pending_error().message();
  EXPECT_TRUE(Contains(response.pending_error().message(), "limit 1.00 MiB"));
}

TEST_F(ExecutorTest, ResizeOfAnUnknownStorageIsIgnored) {
  BatchBuilder().resize(77, 64).run(executor_);
  EXPECT_FALSE(sync().has_pending_error());
  EXPECT_EQ(executor_.storage_count(), 0u);
  EXPECT_EQ(executor_.bytes_in_use(), 0u);
}

wire::Value generator_value(int device, uint64_t id = 0) {
  wire::Value value;
  value.mutable_generator()->set_device(device);
  value.mutable_generator()->set_id(id);
  return value;
}

// aten::uniform_(Tensor(a!) self, float from=0, float to=1, *, Generator? generator=None)
// into `out`, drawing from `generator`; the in-place return is the argument
// itself, which the client answers (storage_id 0).
wire::OpRecord uniform_into(const wire::TensorRef& out, wire::Value generator, uint32_t op_id = 1) {
  return op_record(op_id, "aten::uniform_",
                   {tensor_value(out), double_value(0.0), double_value(1.0), std::move(generator)},
                   {wire::TensorRef()});
}

TEST_F(ExecutorTest, RemoteRandomOpsFollowTheSeed) {
  const wire::TensorRef out = contiguous_ref(1, {8}, at::kFloat);
  BatchBuilder().seed(99).op(uniform_into(out, generator_value(0))).run(executor_);
  at::Tensor first = download(out);
  BatchBuilder().seed(99).op(uniform_into(out, generator_value(0))).run(executor_);
  at::Tensor second = download(out);
  EXPECT_TRUE(at::equal(first, second));
  EXPECT_TRUE(at::all(first >= 0).item<bool>());
  EXPECT_TRUE(at::all(first < 1).item<bool>());
  // The same stream as a CPU generator seeded alike.
  at::Generator cpu = at::make_generator<at::CPUGeneratorImpl>(99);
  EXPECT_TRUE(at::equal(first, at::empty({8}).uniform_(0, 1, cpu)));
}

TEST_F(ExecutorTest, SeedingLeavesTheProcessGeneratorAlone) {
  at::manual_seed(5);
  const at::Tensor expected = at::rand({6});
  at::manual_seed(5);
  BatchBuilder()
      .seed(1234)
      .op(uniform_into(contiguous_ref(1, {8}), generator_value(0)))
      .run(executor_);
  EXPECT_FALSE(sync().has_pending_error());
  EXPECT_TRUE(at::equal(at::rand({6}), expected));
}

class TwoDeviceExecutorTest : public ::testing::Test {
 protected:
  // Two slots on the CPU, as mock serves a GPU machine.
  Executor executor_{ExecutorOptions{
      {c10::Device(c10::kCPU), c10::Device(c10::kCPU)}, {"cuda:0", "cpu"}, 64 * kMiB}};

  at::Tensor draw(int device, uint64_t generator, uint64_t storage_id) {
    const wire::TensorRef out = contiguous_ref(storage_id, {16}, at::kFloat, device);
    BatchBuilder().op(uniform_into(out, generator_value(device, generator))).run(executor_);
    wire::Request request;
    *request.mutable_download()->mutable_source() = out;
    std::string payload;
    wire::Response response;
    EXPECT_TRUE(
        response.ParseFromString(executor_.handle_request(request.SerializeAsString(), &payload)));
    EXPECT_FALSE(response.has_error() || response.has_pending_error())
        << response.error().message() << response.pending_error().message();
    return tensor_from(payload, out);
  }
};

TEST_F(TwoDeviceExecutorTest, EachDeviceAndGeneratorHasItsOwnStream) {
  BatchBuilder().seed(1, 0).seed(1, 1).run(executor_);
  const at::Tensor device0 = draw(0, 0, 1);
  const at::Tensor device1 = draw(1, 0, 2);
  EXPECT_TRUE(at::equal(device0, device1));  // seeded alike, drawn apart
  // Reseeding device 0 leaves device 1's stream where it was.
  BatchBuilder().seed(1, 0).run(executor_);
  EXPECT_TRUE(at::equal(draw(0, 0, 3), device0));
  EXPECT_FALSE(at::equal(draw(1, 0, 4), device1));
  // A generator the client made starts from PyTorch's default seed.
  at::Generator fresh = at::make_generator<at::CPUGeneratorImpl>(c10::default_rng_seed_val);
  EXPECT_TRUE(at::equal(draw(1, 77, 5), at::empty({16}).uniform_(0, 1, fresh)));
  EXPECT_EQ(executor_.client_generators(), 1u);
  BatchBuilder().free({}).run(executor_);
  wire::Batch free_generator;
  free_generator.add_commands()->mutable_free()->add_generator_ids(77);
  executor_.run_batch(free_generator.SerializeAsString(), {});
  EXPECT_EQ(executor_.client_generators(), 0u);
}

TEST_F(TwoDeviceExecutorTest, RngStateRoundTripsPerGenerator) {
  wire::Request get;
  get.mutable_rng_state()->mutable_generator()->set_device(1);
  std::string state;
  wire::Response response;
  ASSERT_TRUE(response.ParseFromString(executor_.handle_request(get.SerializeAsString(), &state)));
  ASSERT_FALSE(response.has_error()) << response.error().message();
  EXPECT_EQ(response.seed(), c10::default_rng_seed_val);
  const at::Tensor first = draw(1, 0, 1);
  wire::Batch restore;
  auto* set = restore.add_commands()->mutable_set_rng_state();
  set->mutable_generator()->set_device(1);
  set->set_nbytes(state.size());
  executor_.run_batch(restore.SerializeAsString(), {state});
  EXPECT_TRUE(at::equal(draw(1, 0, 2), first));
}

TEST_F(ExecutorTest, GeneratorsAreCheckedBeforeUse) {
  const wire::TensorRef out = contiguous_ref(1, {4});
  wire::Value none;
  none.set_none(true);
  // No generator: the kernel would draw from the process's.
  BatchBuilder().op(uniform_into(out, none)).run(executor_);
  wire::Response response = sync();
  ASSERT_TRUE(response.has_pending_error());
  EXPECT_TRUE(Contains(response.pending_error().message(), "Generator argument arrived empty"));
  // The failed op poisoned `out`: the next ones write fresh storages.
  BatchBuilder().op(uniform_into(contiguous_ref(2, {4}), generator_value(5))).run(executor_);
  EXPECT_TRUE(Contains(sync().pending_error().message(), "device slot 5"));
  BatchBuilder().seed(1, 0, 9).run(executor_);
  BatchBuilder().op(uniform_into(contiguous_ref(3, {4}), generator_value(0, 9))).run(executor_);
  EXPECT_FALSE(sync().has_pending_error());
  // Client generators are bounded.
  BatchBuilder many;
  for (uint64_t id = 100; id < 100 + kMaxClientGenerators; ++id) many.seed(1, 0, id);
  many.run(executor_);
  EXPECT_TRUE(Contains(sync().pending_error().message(), "at most"));
  EXPECT_EQ(executor_.client_generators(), kMaxClientGenerators);
}

TEST_F(ExecutorTest, NativeDropoutDrawsFromTheSessionGeneratorAsCpuWould) {
  const at::Tensor input = at::arange(1, 41, at::kFloat).reshape({5, 8});
  upload(1, input);
  const wire::TensorRef output = contiguous_ref(2, {5, 8});
  const wire::TensorRef mask = contiguous_ref(3, {5, 8}, at::kBool);
  wire::Value train;
  train.set_bool_value(true);
  at::manual_seed(3);
  const at::Tensor process_draw = at::rand({4});
  at::manual_seed(3);
  BatchBuilder()
      .seed(21)
      .op(op_record(1, "aten::native_dropout",
                    {tensor_value(ref_for(1, input)), double_value(0.4), train}, {output, mask}))
      .run(executor_);
  EXPECT_TRUE(at::equal(at::rand({4}), process_draw));
  at::Tensor expected_output, expected_mask;
  {
    // CPU's own kernel, on a process generator seeded alike.
    at::manual_seed(21);
    std::tie(expected_output, expected_mask) = at::native_dropout(input, 0.4, true);
  }
  EXPECT_TRUE(at::equal(download(output), expected_output));
  EXPECT_TRUE(at::equal(download(mask), expected_mask));
}

TEST_F(ExecutorTest, CountsEveryCommandOfEveryBatchAfterEachOne) {
  std::vector<uint64_t> seen;
  executor_.set_after_command([&] { seen.push_back(executor_.commands_run()); });
  const at::Tensor a = at::ones({2, 3});
  const at::Tensor b = at::ones({4, 5});
  // A failed op counts as a command like any other.
  BatchBuilder()
      .upload(ref_for(1, a), bytes_of(a))
      .op(op_record(1, "aten::mm", {tensor_value(ref_for(1, a)), tensor_value(ref_for(2, b))},
                    {ref_for(3, at::empty({2, 5}))}))
      .free({1})
      .run(executor_);
  BatchBuilder().seed(7).run(executor_);
  EXPECT_EQ(seen, (std::vector<uint64_t>{1, 2, 3, 4}));
  EXPECT_TRUE(executor_.commands_counted());
  executor_.run_batch("\xff\xff\xff not a batch", {});
  EXPECT_FALSE(executor_.commands_counted());
}

TEST_F(ExecutorTest, AResultInAListArgumentIsCopiedNotKeptUnderASecondId) {
  // atleast_1d returns a tensor of its list as it is; storage 2 must not
  // share storage 1's memory, or a write to 1 would change 2 behind the
  // client's back.
  const at::Tensor source = at::tensor({1.0f, 2.0f});
  upload(1, source);
  wire::Value list;
  *list.mutable_list()->add_values() = tensor_value(ref_for(1, source));
  wire::TensorRef reserved;
  reserved.set_storage_id(2);
  wire::Response response = execute(op_record(1, "aten::atleast_1d.Sequence", {list}, {reserved}));
  ASSERT_FALSE(response.has_error()) << response.error().message();
  ASSERT_EQ(response.outputs_size(), 1);
  ASSERT_EQ(response.outputs(0).kind_case(), wire::OutputInfo::kList);
  const wire::TensorRef& copy = response.outputs(0).list().items(0).tensor();
  ASSERT_EQ(copy.storage_id(), 2u);
  upload(1, at::tensor({5.0f, 6.0f}));
  EXPECT_TRUE(at::equal(download(copy), source));
}

TEST_F(ExecutorTest, UndecodableBatchIsAPendingError) {
  executor_.run_batch("\xff\xff\xff not a batch", {});
  wire::Response response = sync();
  ASSERT_TRUE(response.has_pending_error());
  EXPECT_TRUE(Contains(response.pending_error().message(), "could not decode"));
}

TEST_F(ExecutorTest, UndecodableRequestIsAnError) {
  std::string payload;
  const std::string answer = executor_.handle_request("\xff\xff\xff not a request", &payload);
  wire::Response response;
  ASSERT_TRUE(response.ParseFromString(answer));
  ASSERT_TRUE(response.has_error());
  EXPECT_TRUE(Contains(response.error().message(), "could not decode"));
}

// A field number no Command or Request kind uses, as a newer client would
// send one: it travels as an unknown field.
constexpr int kUnknownKind = 99;

TEST_F(ExecutorTest, UnknownCommandKindIsAPendingErrorNamingIt) {
  auto run_one = [&](const wire::Command& command) {
    wire::Batch batch;
    *batch.add_commands() = command;
    std::string encoded;
    ASSERT_TRUE(batch.SerializeToString(&encoded));
    executor_.run_batch(encoded, std::vector<std::string>{});
  };
  wire::Command newer;
  newer.GetReflection()->MutableUnknownFields(&newer)->AddLengthDelimited(kUnknownKind, "");
  run_one(newer);
  wire::Response response = sync();
  ASSERT_TRUE(response.has_pending_error());
  EXPECT_TRUE(Contains(response.pending_error().message(), "command of kind 99"));
  run_one(wire::Command());
  response = sync();
  ASSERT_TRUE(response.has_pending_error());
  EXPECT_TRUE(Contains(response.pending_error().message(), "command of no kind"));
  EXPECT_EQ(executor_.commands_run(), 2u);  // counted, as the client counts them
}

TEST_F(ExecutorTest, UnknownRequestKindIsAnErrorNamingIt) {
  wire::Request unknown;
  unknown.GetReflection()->MutableUnknownFields(&unknown)->AddLengthDelimited(kUnknownKind, "");
  wire::Response response = request(unknown);
  ASSERT_TRUE(response.has_error());
  EXPECT_TRUE(Contains(response.error().message(), "request of kind 99"))
      << response.error().message();
  response = request(wire::Request());
  ASSERT_TRUE(response.has_error());
  EXPECT_TRUE(Contains(response.error().message(), "request of no kind"))
      << response.error().message();
  // A sync is a known request that asks for nothing.
  EXPECT_FALSE(sync().has_error());
}

TEST_F(ExecutorTest, AReturnOfAnUnknownTypeIsAnError) {
  // aten::_local_scalar_dense of a complex tensor returns a complex Scalar,
  // which OutputInfo cannot carry.
  upload(1, at::ones({}, at::kComplexFloat));
  wire::Response response =
      execute(op_record(1, "aten::_local_scalar_dense",
                        {tensor_value(ref_for(1, at::ones({}, at::kComplexFloat)))}, {}));
  ASSERT_TRUE(response.has_error());
  EXPECT_TRUE(Contains(response.error().message(), "cannot send back"))
      << response.error().message();
  EXPECT_EQ(response.error().op_name(), "aten::_local_scalar_dense");
}

TEST_F(ExecutorTest, UnknownDeviceSlotIsAnError) {
  std::string payload;
  wire::Response response =
      download_response(make_ref(1, 16, {4}, {1}, 0, at::kFloat, /*device=*/3), &payload);
  ASSERT_TRUE(response.has_error());
  EXPECT_TRUE(Contains(response.error().message(), "device slot 3"));
}

TEST_F(ExecutorTest, HostileRefsAreRefusedBeforeMemoryIsTouched) {
  upload(1, at::arange(16, at::kFloat));
  const int64_t huge = std::numeric_limits<int64_t>::max();
  struct Case {
    wire::TensorRef ref;
    const char* says;
  };
  wire::TensorRef bad_dtype = contiguous_ref(1, {4});
  bad_dtype.set_dtype(4242);
  const std::vector<Case> cases = {
      {make_ref(1, 64, {4}, {-1}, 3, at::kFloat), "negative size or stride"},
      {make_ref(1, 64, {4}, {1}, -2, at::kFloat), "negative storage offset"},
      {make_ref(1, 64, {2, huge}, {huge, 1}, 0, at::kFloat), "more than 2^64"},
      {make_ref(1, 64, {4, 4}, {4}, 0, at::kFloat), "2 sizes but 1 strides"},
      {make_ref(1, 64, {5}, {4}, 0, at::kFloat), "too few for a view"},
      {make_ref(0, 64, {4}, {1}, 0, at::kFloat), "storage ID 0"},
      {make_ref(9, 8, {4}, {1}, 0, at::kFloat), "is to hold 8"},
      {bad_dtype, "dtype 4242"},
  };
  for (const Case& c : cases) {
    std::string payload;
    wire::Response response = download_response(c.ref, &payload);
    ASSERT_TRUE(response.has_error()) << c.says;
    EXPECT_TRUE(Contains(response.error().message(), c.says));
    EXPECT_TRUE(payload.empty());
  }
  EXPECT_EQ(executor_.storage_count(), 1u);
  // An op id beyond what a session may name is refused, not allocated.
  BatchBuilder().op(op_record(4000000000u, "aten::neg", {}, {})).run(executor_);
  EXPECT_TRUE(Contains(sync().pending_error().message(), "op id"));
}

TEST_F(ExecutorTest, NewStoragesAndGrownBytesStartZeroed) {
  // Leave non-zero bytes in freed memory, then ask for new storages.
  for (uint64_t id = 1; id <= 8; ++id) upload(id, at::full({4096}, 7.0f));
  BatchBuilder().free({1, 2, 3, 4, 5, 6, 7, 8}).run(executor_);
  EXPECT_TRUE(at::equal(download(contiguous_ref(10, {4096})), at::zeros({4096})));
  upload(11, at::full({4}, 3.0f));
  BatchBuilder().resize(11, 64 * sizeof(float)).run(executor_);
  at::Tensor grown = download(contiguous_ref(11, {64}));
  EXPECT_TRUE(at::equal(grown.narrow(0, 0, 4), at::full({4}, 3.0f)));
  EXPECT_TRUE(at::equal(grown.narrow(0, 4, 60), at::zeros({60})));
  // An upload that covers part of a new storage leaves the rest zeroed.
  const wire::TensorRef part = make_ref(12, 16 * sizeof(float), {4}, {1}, 8, at::kFloat);
  BatchBuilder().upload(part, bytes_of(at::full({4}, 2.0f))).run(executor_);
  at::Tensor whole = download(contiguous_ref(12, {16}));
  EXPECT_TRUE(at::equal(whole.narrow(0, 8, 4), at::full({4}, 2.0f)));
  EXPECT_EQ(whole.sum().item<float>(), 8.0f);
}

wire::Value string_value(const std::string& text) {
  wire::Value value;
  value.set_string_value(text);
  return value;
}

wire::Value none_value() {
  wire::Value value;
  value.set_none(true);
  return value;
}

wire::Value int_value(int64_t i) {
  wire::Value value;
  value.set_int_value(i);
  return value;
}

TEST_F(ExecutorTest, OpsThatReachFilesOrHandOutUnwrittenMemoryAreRefused) {
  const std::string path = ::testing::TempDir() + "/from_file_target";
  upload(1, at::arange(4, at::kFloat));
  // aten::from_file(str filename, bool? shared, int? size, *, dtype, layout, device, pin_memory)
  BatchBuilder()
      .op(op_record(1, "aten::from_file",
                    {string_value(path), none_value(), int_value(16), none_value(), none_value(),
                     none_value(), none_value()},
                    {contiguous_ref(2, {16}, at::kByte)}))
      .run(executor_);
  wire::Response response = sync();
  ASSERT_TRUE(response.has_pending_error());
  EXPECT_TRUE(Contains(response.pending_error().message(), "refused"));
  EXPECT_TRUE(Contains(response.pending_error().message(), "files or processes"));
  EXPECT_NE(access(path.c_str(), F_OK), 0) << "from_file created " << path;

  // empty.memory_format would hand out whatever the allocator held.
  const wire::OpRecord empty = op_record(2, "aten::empty.memory_format",
                                         {int_list_value({1024}), none_value(), none_value(),
                                          none_value(), none_value(), none_value()},
                                         {contiguous_ref(3, {1024}, at::kFloat)});
  BatchBuilder().op(empty).run(executor_);
  response = sync();
  ASSERT_TRUE(response.has_pending_error());
  EXPECT_TRUE(Contains(response.pending_error().message(), "without writing it"));
  response = execute(empty);
  EXPECT_TRUE(Contains(response.error().message(), "without writing it"));
  // resize_ would grow a storage with unwritten bytes behind the client's back.
  BatchBuilder()
      .op(op_record(3, "aten::resize_",
                    {tensor_value(contiguous_ref(1, {4})), int_list_value({1 << 20}), none_value()},
                    {wire::TensorRef()}))
      .run(executor_);
  EXPECT_TRUE(Contains(sync().pending_error().message(), "without writing it"));
  EXPECT_EQ(executor_.bytes_in_use(), 4 * sizeof(float));
  // The session goes on.
  EXPECT_TRUE(at::equal(download(contiguous_ref(1, {4})), at::arange(4, at::kFloat)));
}

// The fused LSTM cell, which torch has only for CUDA: on the CPU the executor
// runs its stand-in (server/cpu_rnn_cells.cpp), whose checks come first.
TEST_F(ExecutorTest, FusedLstmCellRunsOnTheCpuAndRefusesAStateThatDoesNotFit) {
  const at::Tensor input_gates = at::randn({2, 12}), hidden_gates = at::randn({2, 12});
  const at::Tensor cx = at::randn({2, 3}), small = at::randn({2, 2});
  upload(1, input_gates);
  upload(2, hidden_gates);
  upload(3, cx);
  upload(4, small);
  const auto cell = [&](uint64_t state, int64_t hidden, uint64_t first_output) {
    return op_record(
        1, "aten::_thnn_fused_lstm_cell",
        {tensor_value(ref_for(1, input_gates)), tensor_value(ref_for(2, hidden_gates)),
         tensor_value(contiguous_ref(state, {2, hidden})), none_value(), none_value()},
        {contiguous_ref(first_output, {2, hidden}), contiguous_ref(first_output + 1, {2, hidden}),
         contiguous_ref(first_output + 2, {2, 12})});
  };
  BatchBuilder().op(cell(3, 3, 10)).run(executor_);
  ASSERT_FALSE(sync().has_pending_error());
  // CPU's LSTM cell: gates i, f, g, o.
  const std::vector<at::Tensor> gates = (input_gates + hidden_gates).chunk(4, 1);
  const at::Tensor cy = gates[1].sigmoid() * cx + gates[0].sigmoid() * gates[2].tanh();
  EXPECT_TRUE(at::allclose(download(contiguous_ref(11, {2, 3})), cy));
  EXPECT_TRUE(at::allclose(download(contiguous_ref(10, {2, 3})), gates[3].sigmoid() * cy.tanh()));

  // Gates of 12 need a state of 3: one of 2 is refused, and the session goes on.
  BatchBuilder().op(cell(4, 2, 20)).run(executor_);
  const wire::Response refused = sync();
  ASSERT_TRUE(refused.has_pending_error());
  EXPECT_TRUE(Contains(refused.pending_error().message(), "do not fit the state"));
  EXPECT_TRUE(at::equal(download(ref_for(4, small)), small));
}

TEST_F(ExecutorTest, FusedGruCellBackwardRefusesAWorkspaceThatDoesNotFit) {
  upload(1, at::randn({2, 3}));
  upload(2, at::randn({2, 14}));  // 5 * 3 = 15 columns expected
  wire::Value has_bias;
  has_bias.set_bool_value(false);
  BatchBuilder()
      .op(op_record(1, "aten::_thnn_fused_gru_cell_backward",
                    {tensor_value(contiguous_ref(1, {2, 3})),
                     tensor_value(contiguous_ref(2, {2, 14})), has_bias},
                    {contiguous_ref(3, {2, 9}), contiguous_ref(4, {2, 9}),
                     contiguous_ref(5, {2, 3}), wire::TensorRef(), wire::TensorRef()}))
      .run(executor_);
  const wire::Response refused = sync();
  ASSERT_TRUE(refused.has_pending_error());
  EXPECT_TRUE(Contains(refused.pending_error().message(), "does not fit the gradient"));
}

TEST_F(SmallExecutorTest, AnOutArgumentAKernelGrowsPastTheLimitIsDroppedAndPoisoned) {
  at::Tensor small = at::arange(4, at::kFloat);
  upload(1, small);
  upload(2, at::zeros({1}));
  const uint64_t before = executor_.bytes_in_use();
  // repeat.out grows the 4-byte out storage to 16 MiB inside the kernel,
  // where no ref was checked against the limit.
  BatchBuilder()
      .op(op_record(1, "aten::repeat.out",
                    {tensor_value(ref_for(1, small)), int_list_value({1024, 1024}),
                     tensor_value(contiguous_ref(2, {1}))},
                    {wire::TensorRef()}))
      .run(executor_);
  wire::Response response = sync();
  ASSERT_TRUE(response.has_pending_error());
  EXPECT_TRUE(Contains(response.pending_error().message(), "out of memory"));
  EXPECT_EQ(executor_.bytes_in_use(), before - sizeof(float));
  EXPECT_EQ(executor_.storage_count(), 1u);
  std::string payload;
  EXPECT_TRUE(download_response(contiguous_ref(2, {1}), &payload).has_error());
  EXPECT_TRUE(at::equal(download(ref_for(1, small)), small));
}

TEST_F(SmallExecutorTest, EveryStorageCostsItsBookkeepingToo) {
  // 1 MiB holds about 2,000 one-byte storages, not a million.
  for (uint64_t id = 1; id <= 4096; ++id) {
    BatchBuilder().upload(contiguous_ref(id, {1}, at::kByte), std::string(1, 'x')).run(executor_);
  }
  wire::Response response = sync();
  ASSERT_TRUE(response.has_pending_error());
  EXPECT_TRUE(Contains(response.pending_error().message(), "out of memory"));
  EXPECT_LT(executor_.storage_count(), 2048u);
  EXPECT_LE(executor_.bytes_charged(), kMiB);
  EXPECT_EQ(executor_.bytes_charged(),
            executor_.bytes_in_use() + executor_.storage_count() * kStorageOverheadBytes);
}

TEST(MemoryBudgetTest, ChargesAreAllOrNothingAndNeverWrap) {
  MemoryBudget budget(1000);
  EXPECT_TRUE(budget.try_charge(600));
  EXPECT_FALSE(budget.try_charge(401));
  EXPECT_FALSE(budget.try_charge(UINT64_MAX));  // 600 + 2^64-1 would wrap to 599
  EXPECT_FALSE(budget.fits(UINT64_MAX - 100));
  EXPECT_EQ(budget.used(), 600u);
  EXPECT_TRUE(budget.try_charge(400));
  EXPECT_FALSE(budget.try_charge(1));
  budget.release(1000);
  EXPECT_EQ(budget.used(), 0u);
}

TEST(ExecutorBudgetTest, SessionsShareTheServersBudget) {
  auto budget = std::make_shared<MemoryBudget>(kMiB);
  ExecutorOptions options{{c10::Device(c10::kCPU)}, {"cpu"}, kMiB, budget};
  auto first = std::make_unique<Executor>(options);
  Executor second(options);
  const std::string bytes(600 * 1024, 'a');
  BatchBuilder().upload(contiguous_ref(1, {600 * 1024}, at::kByte), bytes).run(*first);
  EXPECT_EQ(budget->used(), 600 * 1024 + kStorageOverheadBytes);
  // The second session's own limit has room; the server's budget does not.
  BatchBuilder().upload(contiguous_ref(1, {600 * 1024}, at::kByte), bytes).run(second);
  EXPECT_EQ(second.storage_count(), 0u);
  std::string payload;
  wire::Request sync;
  sync.mutable_sync();
  wire::Response response;
  ASSERT_TRUE(response.ParseFromString(second.handle_request(sync.SerializeAsString(), &payload)));
  EXPECT_TRUE(Contains(response.pending_error().message(), "sessions together hold"))
      << response.pending_error().message();
  // A session that ends gives its bytes back.
  first.reset();
  EXPECT_EQ(budget->used(), 0u);
  BatchBuilder().upload(contiguous_ref(1, {600 * 1024}, at::kByte), bytes).run(second);
  EXPECT_EQ(second.storage_count(), 1u);
}

TEST_F(SmallExecutorTest, ADownloadMayNotBlowAStorageUpBeyondTheLimit) {
  upload(1, at::arange(4, at::kFloat));
  // Stride 0: 16 bytes shown as 64 Mi floats (256 MiB).
  std::string payload;
  wire::Response response =
      download_response(make_ref(1, 16, {64 << 20}, {0}, 0, at::kFloat), &payload);
  ASSERT_TRUE(response.has_error());
  EXPECT_TRUE(Contains(response.error().message(), "out of memory"));
  EXPECT_TRUE(payload.empty());
  // A modest broadcast still downloads.
  EXPECT_TRUE(at::equal(download(make_ref(1, 16, {3, 4}, {0, 1}, 0, at::kFloat)),
                        at::arange(4, at::kFloat).expand({3, 4})));
}

TEST(ExecutorLimitsTest, StoragesPerSessionAreBounded) {
  ExecutorOptions options{{c10::Device(c10::kCPU)}, {"cpu"}, 256 * kMiB};
  options.max_storages = 3;
  Executor executor(options);
  for (uint64_t id = 1; id <= 4; ++id) {
    BatchBuilder().upload(contiguous_ref(id, {1}, at::kByte), std::string(1, 'x')).run(executor);
  }
  EXPECT_EQ(executor.storage_count(), 3u);
  wire::Request sync;
  sync.mutable_sync();
  std::string payload;
  wire::Response response;
  ASSERT_TRUE(
      response.ParseFromString(executor.handle_request(sync.SerializeAsString(), &payload)));
  EXPECT_TRUE(Contains(response.pending_error().message(), "the most a session may hold"));
}

// Pausing: a new session on the same state folder gets every storage back
// under its ID, with its bytes, and the folder is emptied.
class StateExecutorTest : public ::testing::Test {
 protected:
  StateExecutorTest() {
    const char* base = std::getenv("TEST_TMPDIR");
    std::string path = std::string(base ? base : "/tmp") + "/executor-state-XXXXXX";
    EXPECT_NE(mkdtemp(path.data()), nullptr);
    state_dir_ = path + "/session";
  }

  // A session on `folder` (default: the test's), as a server would start one.
  std::unique_ptr<Executor> session(const std::string& folder = "",
                                    uint64_t memory_limit = 256 * kMiB) {
    ExecutorOptions options{{c10::Device(c10::kCPU)}, {"cpu"}, memory_limit};
    options.state_dir = folder.empty() ? state_dir_ : folder;
    return std::make_unique<Executor>(options);
  }

  // Queues an mm of a (2x3) by itself, which fails: storage 2, its output,
  // is poisoned and the error pending.
  static void fail_an_op(Executor& executor, const at::Tensor& a) {
    BatchBuilder()
        .op(op_record(1, "aten::mm", {tensor_value(ref_for(1, a)), tensor_value(ref_for(1, a))},
                      {contiguous_ref(2, {2, 3}, at::kFloat)}))
        .run(executor);
  }

  static wire::Response ask(Executor& executor, const wire::Request& request,
                            std::string* payload) {
    std::string answer = executor.handle_request(request.SerializeAsString(), payload);
    wire::Response response;
    EXPECT_TRUE(response.ParseFromString(answer));
    return response;
  }

  static wire::Response state_request(Executor& executor, bool save) {
    wire::Request request;
    if (save) {
      request.mutable_save_state();
    } else {
      request.mutable_restore_state();
    }
    std::string ignored;
    return ask(executor, request, &ignored);
  }

  static wire::Response download(Executor& executor, const wire::TensorRef& ref,
                                 std::string* payload) {
    wire::Request request;
    *request.mutable_download()->mutable_source() = ref;
    return ask(executor, request, payload);
  }

  std::string state_dir_;
};

TEST_F(StateExecutorTest, SavedStoragesComeBackUnderTheirIdsInANewSession) {
  const at::Tensor a = at::randn({3, 4});
  const at::Tensor b = at::arange(10, at::kLong);
  std::unique_ptr<Executor> first = session();
  BatchBuilder()
      .upload(ref_for(1, a), bytes_of(a))
      .upload(ref_for(2, b), bytes_of(b))
      .op(op_record(1, "aten::mul.Tensor",
                    {tensor_value(ref_for(1, a)), tensor_value(ref_for(1, a))}, {ref_for(3, a)}))
      .run(*first);
  const wire::Response saved = state_request(*first, /*save=*/true);
  ASSERT_FALSE(saved.has_error()) << saved.error().message();
  EXPECT_EQ(
      std::vector<uint64_t>(saved.state().storage_ids().begin(), saved.state().storage_ids().end()),
      (std::vector<uint64_t>{1, 2, 3}));
  EXPECT_EQ(saved.state().bytes(), 2 * a.nbytes() + b.nbytes());
  first.reset();  // the server stops

  std::unique_ptr<Executor> second = session();
  const wire::Response restored = state_request(*second, /*save=*/false);
  ASSERT_FALSE(restored.has_error()) << restored.error().message();
  EXPECT_EQ(restored.state().storage_ids_size(), 3);
  EXPECT_EQ(restored.state().missing_ids_size(), 0);
  EXPECT_EQ(second->bytes_in_use(), 2 * a.nbytes() + b.nbytes());
  std::string payload;
  ASSERT_FALSE(download(*second, ref_for(3, a), &payload).has_error());
  EXPECT_TRUE(at::equal(tensor_from(payload, ref_for(3, a)), a * a));
  ASSERT_FALSE(download(*second, ref_for(2, b), &payload).has_error());
  EXPECT_TRUE(at::equal(tensor_from(payload, ref_for(2, b)), b));
  // Restored once: the folder is gone, so a second restore finds nothing.
  EXPECT_EQ(state_request(*second, /*save=*/false).state().storage_ids_size(), 0);
}

TEST_F(StateExecutorTest, AStorageTheSaveDidNotWriteIsPoisonedNotInvented) {
  const at::Tensor a = at::randn({8});
  std::unique_ptr<Executor> first = session();
  upload_to(*first, 1, a);
  upload_to(*first, 2, a);
  ASSERT_FALSE(state_request(*first, /*save=*/true).has_error());
  first.reset();
  // As if the server had been killed before it wrote storage 2.
  ASSERT_EQ(unlink((state_dir_ + "/2.storage").c_str()), 0);

  std::unique_ptr<Executor> second = session();
  const wire::Response restored = state_request(*second, /*save=*/false);
  EXPECT_EQ(restored.state().storage_ids_size(), 1);
  ASSERT_EQ(restored.state().missing_ids_size(), 1);
  EXPECT_EQ(restored.state().missing_ids(0), 2u);
  std::string payload;
  const wire::Response lost = download(*second, ref_for(2, a), &payload);
  ASSERT_TRUE(lost.has_error());
  EXPECT_TRUE(Contains(lost.error().message(), "was not saved when its machine paused"));
  ASSERT_FALSE(download(*second, ref_for(1, a), &payload).has_error());
  EXPECT_TRUE(at::equal(tensor_from(payload, ref_for(1, a)), a));
}

TEST_F(StateExecutorTest, APoisonedStorageStaysPoisonedAcrossAPause) {
  const at::Tensor a = at::randn({2, 3});
  std::unique_ptr<Executor> first = session();
  upload_to(*first, 1, a);
  fail_an_op(*first, a);
  wire::Request sync;
  sync.mutable_sync();
  std::string ignored;
  ASSERT_TRUE(ask(*first, sync, &ignored).has_pending_error());  // the error, reported
  ASSERT_FALSE(state_request(*first, /*save=*/true).has_error());
  first.reset();
  std::unique_ptr<Executor> second = session();
  const wire::Response restored = state_request(*second, /*save=*/false);
  ASSERT_EQ(restored.state().missing_ids_size(), 1);
  EXPECT_EQ(restored.state().missing_ids(0), 2u);
}

TEST_F(StateExecutorTest, PausedSessionsKeepAtMostTheServersBudgetOnDisk) {
  const at::Tensor big = at::zeros({150 * 1024}, at::kFloat);  // 600 KiB
  const std::string root = state_dir_.substr(0, state_dir_.rfind('/'));
  std::unique_ptr<Executor> first = session(root + "/" + std::string(64, 'a'), 1 * kMiB);
  upload_to(*first, 1, big);
  ASSERT_FALSE(state_request(*first, /*save=*/true).has_error());
  // Another session, saving as much again beside it, would pass 1 MiB.
  std::unique_ptr<Executor> second = session(root + "/" + std::string(64, 'b'), 1 * kMiB);
  upload_to(*second, 1, big);
  const wire::Response refused = state_request(*second, /*save=*/true);
  ASSERT_TRUE(refused.has_error());
  EXPECT_TRUE(Contains(refused.error().message(), "other paused sessions"));
  // The first may save again: its own folder does not count against it.
  EXPECT_FALSE(state_request(*first, /*save=*/true).has_error());
}

TEST_F(StateExecutorTest, ARestoreWithNothingSavedFailsRatherThanReadZeros) {
  std::unique_ptr<Executor> session_after_a_crash = session();
  const wire::Response restored = state_request(*session_after_a_crash, /*save=*/false);
  ASSERT_TRUE(restored.has_error());
  EXPECT_TRUE(Contains(restored.error().message(), "nothing was saved"));
}

TEST_F(StateExecutorTest, ASaveAfterAFailedOpSavesNothingAndTellsTheCommandsRun) {
  const at::Tensor a = at::randn({2, 3});
  std::unique_ptr<Executor> first = session();
  upload_to(*first, 1, a);
  fail_an_op(*first, a);
  const wire::Response refused = state_request(*first, /*save=*/true);
  EXPECT_TRUE(refused.has_pending_error());
  ASSERT_TRUE(refused.has_error());
  EXPECT_TRUE(Contains(refused.error().message(), "nothing was saved"));
  const wire::Response saved = state_request(*first, /*save=*/true);  // reported once: now it saves
  ASSERT_FALSE(saved.has_error()) << saved.error().message();
  EXPECT_EQ(saved.state().commands_run(), 2u);
  first.reset();
  std::unique_ptr<Executor> second = session();
  EXPECT_EQ(state_request(*second, /*save=*/false).state().commands_run(), 2u);
}

TEST(ExecutorStateTest, ASessionWithoutAStateFolderCannotPause) {
  Executor executor(ExecutorOptions{{c10::Device(c10::kCPU)}, {"cpu"}, 64 * kMiB});
  wire::Request request;
  request.mutable_save_state();
  std::string payload;
  wire::Response response;
  ASSERT_TRUE(
      response.ParseFromString(executor.handle_request(request.SerializeAsString(), &payload)));
  ASSERT_TRUE(response.has_error());
  EXPECT_TRUE(Contains(response.error().message(), "--state-dir"));
}

TEST(ExecutorProcessTest, ProtobufAndTorchInOneProcess) {
  // Debian's libprotobuf (through libmycelya_wire.so) ...
  wire::Batch batch;
  auto* upload = batch.add_commands()->mutable_upload();
  *upload->mutable_target() = contiguous_ref(5, {2, 2}, at::kFloat);
  upload->set_payload_index(0);
  std::string encoded;
  ASSERT_TRUE(batch.SerializeToString(&encoded));
  wire::Batch parsed;
  ASSERT_TRUE(parsed.ParseFromString(encoded));
  ASSERT_EQ(parsed.commands_size(), 1);
  EXPECT_EQ(parsed.commands(0).upload().target().storage_id(), 5u);
  EXPECT_EQ(parsed.commands(0).upload().target().storage_nbytes(), 16u);

  // ... and the torch wheel's libraries, in the same test.
  at::Tensor a = at::tensor({1.0f, 2.0f, 3.0f, 4.0f}).reshape({2, 2});
  at::Tensor product = at::matmul(a, a);
  EXPECT_TRUE(at::allclose(product, at::tensor({7.0f, 10.0f, 15.0f, 22.0f}).reshape({2, 2})));

  // And both together: the executor decoding what protobuf encoded.
  Executor executor(ExecutorOptions{{c10::Device(c10::kCPU)}, {"cpu"}, 64 * kMiB});
  executor.run_batch(encoded, {bytes_of(a)});
  wire::Request request;
  *request.mutable_download()->mutable_source() = contiguous_ref(5, {2, 2}, at::kFloat);
  std::string encoded_request;
  ASSERT_TRUE(request.SerializeToString(&encoded_request));
  std::string payload;
  wire::Response response;
  ASSERT_TRUE(response.ParseFromString(executor.handle_request(encoded_request, &payload)));
  EXPECT_FALSE(response.has_error());
  EXPECT_FALSE(response.has_pending_error());
  EXPECT_EQ(payload, bytes_of(a));
}

// torch.Event on the machine (server/session_events.h).
class EventExecutorTest : public ExecutorTest {
 protected:
  static void record(wire::Batch* batch, uint64_t id, int device = 0, bool timing = true) {
    wire::RecordEvent* event = batch->add_commands()->mutable_record_event();
    event->set_event_id(id);
    event->set_device(device);
    event->set_timing(timing);
  }
  void run(const wire::Batch& batch) { executor_.run_batch(batch.SerializeAsString(), {}); }
  wire::Response event_request(uint64_t id, std::optional<uint64_t> end = std::nullopt) {
    wire::Request req;
    req.mutable_event()->set_event_id(id);
    if (end) {
      req.mutable_event()->set_end_event_id(*end);
      req.mutable_event()->set_elapsed(true);
    }
    return request(req);
  }
};

TEST_F(EventExecutorTest, EventsTimeTheCommandsBetweenThem) {
  wire::Batch batch;
  record(&batch, 1);
  record(&batch, 2);
  record(&batch, 3);
  run(batch);
  const wire::Response first = event_request(1, 2);
  ASSERT_FALSE(first.has_error()) << first.error().message();
  const wire::Response second = event_request(2, 3);
  const wire::Response whole = event_request(1, 3);
  EXPECT_GE(first.elapsed_ms(), 0.0);
  EXPECT_GE(second.elapsed_ms(), 0.0);
  EXPECT_NEAR(whole.elapsed_ms(), first.elapsed_ms() + second.elapsed_ms(), 1e-6);
  EXPECT_TRUE(event_request(1).event_done());
  // Never recorded: done, as an unrecorded CUDA event is.
  EXPECT_TRUE(event_request(99).event_done());
}

TEST_F(EventExecutorTest, ElapsedNeedsRecordedTimedEventsOfOneDevice) {
  wire::Batch batch;
  record(&batch, 1);
  record(&batch, 2, 0, /*timing=*/false);
  run(batch);
  EXPECT_TRUE(Contains(event_request(1, 7).error().message(), "never recorded"));
  EXPECT_TRUE(Contains(event_request(1, 2).error().message(), "enable_timing=True"));
  wire::Batch destroy;
  destroy.add_commands()->mutable_destroy_event()->set_event_id(1);
  run(destroy);
  EXPECT_TRUE(Contains(event_request(1, 1).error().message(), "never recorded"));
  EXPECT_FALSE(sync().has_pending_error());
}

TEST_F(EventExecutorTest, AnEventOnAMissingDeviceIsAPendingError) {
  wire::Batch batch;
  record(&batch, 1, /*device=*/5);
  record(&batch, 2, /*device=*/-1);
  run(batch);
  const wire::Response response = sync();
  ASSERT_TRUE(response.has_pending_error());
  EXPECT_TRUE(Contains(response.pending_error().message(), "device slot 5 does not exist"));
  EXPECT_TRUE(event_request(1).event_done());  // nothing was recorded
  EXPECT_TRUE(Contains(event_request(1, 1).error().message(), "never recorded"));
}

TEST_F(EventExecutorTest, ASessionHoldsAtMostKMaxEvents) {
  wire::Batch batch;
  for (uint64_t id = 1; id <= SessionEvents::kMaxEvents; ++id) record(&batch, id);
  run(batch);
  ASSERT_FALSE(sync().has_pending_error());
  wire::Batch more;
  record(&more, 1);  // recording one again is fine
  record(&more, SessionEvents::kMaxEvents + 1);
  run(more);
  const wire::Response response = sync();
  ASSERT_TRUE(response.has_pending_error());
  EXPECT_TRUE(Contains(response.pending_error().message(), "at most 65536 events"));
  wire::Batch freed;
  freed.add_commands()->mutable_destroy_event()->set_event_id(2);
  record(&freed, SessionEvents::kMaxEvents + 1);
  run(freed);
  EXPECT_FALSE(sync().has_pending_error());
  EXPECT_FALSE(event_request(1, SessionEvents::kMaxEvents + 1).has_error());
}

}  // namespace
}  // namespace mycelya
