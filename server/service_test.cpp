// SPDX-License-Identifier: AGPL-3.0-or-later
//
// MycelyaService tests: a real gRPC server in this process, on a unix socket,
// talked to through a generated stub exactly as a remote client would. The
// last tests start the mycelya-server binary itself.
#include "server/service.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "proto/handshake.h"
#include "proto/mycelya.grpc.pb.h"
#include "proto/mycelya.pb.h"
#include "tests/cc/gtest_helpers.h"
#include "tests/cc/server_process.h"
#include "tests/cc/wire_refs.h"

extern char** environ;

namespace mycelya {
namespace {

constexpr char kToken[] = "s3cret-token";
constexpr uint64_t kMiB = 1ull << 20;

std::string bearer(const std::string& token) { return "Bearer " + token; }

// A unique socket path. sun_path holds 108 bytes and Bazel's TEST_TMPDIR can
// be deeper than that, so a long one falls back to /tmp.
std::string socket_path() {
  static std::atomic<int> counter{0};
  const std::string name =
      "/mycelya-" + std::to_string(getpid()) + "-" + std::to_string(counter++) + ".sock";
  const char* tmp = std::getenv("TEST_TMPDIR");
  std::string path = std::string(tmp ? tmp : "/tmp") + name;
  if (path.size() >= 100) path = "/tmp" + name;
  unlink(path.c_str());
  return path;
}

std::string pattern(size_t n, unsigned seed) {
  std::string bytes(n, '\0');
  for (size_t i = 0; i < n; ++i) bytes[i] = static_cast<char>((i * 131 + seed * 17 + 7) & 0xff);
  return bytes;
}

// Splits `bytes` into chunks of `size` (one empty chunk for no bytes).
std::vector<std::string> split(const std::string& bytes, size_t size) {
  std::vector<std::string> chunks;
  for (size_t offset = 0; offset < bytes.size(); offset += size) {
    chunks.push_back(bytes.substr(offset, size));
  }
  if (chunks.empty()) chunks.emplace_back();
  return chunks;
}

wire::Batch upload_batch(const std::vector<wire::TensorRef>& targets) {
  wire::Batch batch;
  for (size_t i = 0; i < targets.size(); ++i) {
    auto* upload = batch.add_commands()->mutable_upload();
    *upload->mutable_target() = targets[i];
    upload->set_payload_index(static_cast<uint32_t>(i));
  }
  return batch;
}

// One command, an mm of storages 1 (2x3) and 2 (4x5) into storage 3, that
// fails on the server: the shapes do not match.
wire::Batch failing_mm_batch() {
  wire::Batch batch;
  auto* op = batch.add_commands()->mutable_op();
  op->set_op_id(1);
  op->set_op_name("aten::mm");
  *op->add_args()->mutable_tensor() = contiguous_ref(1, {2, 3});
  *op->add_args()->mutable_tensor() = contiguous_ref(2, {4, 5});
  *op->add_outputs() = contiguous_ref(3, {2, 5});
  return batch;
}

// A payload chunk; the first chunk of a payload carries the payload's total size.
wire::ClientMessage chunk_message(const std::string& data, bool last, uint64_t total_bytes = 0) {
  wire::ClientMessage message;
  message.mutable_chunk()->set_data(data);
  message.mutable_chunk()->set_last(last);
  message.mutable_chunk()->set_total_bytes(total_bytes);
  return message;
}

// One Session stream, as the client drives it.
class SessionClient {
 public:
  // `versions`: the protocol and torch versions sent, as a client does (none
  // when nullopt, as an old client would).
  SessionClient(wire::Mycelya::Stub* stub, const std::optional<std::string>& authorization,
                const std::optional<std::pair<std::string, std::string>>& versions =
                    std::make_pair(std::to_string(wire::PROTOCOL_VERSION_CURRENT), torch_version()),
                const std::string& state_key = "") {
    if (authorization) context_.AddMetadata("authorization", *authorization);
    if (!state_key.empty()) context_.AddMetadata(kStateKeyMetadataKey, state_key);
    if (versions) {
      context_.AddMetadata(kProtocolMetadataKey, versions->first);
      context_.AddMetadata(kTorchMetadataKey, versions->second);
    }
    stream_ = stub->Session(&context_);
  }

  // Reads the first message, which must be the Hello.
  wire::Hello hello() {
    wire::ServerMessage message;
    EXPECT_TRUE(stream_->Read(&message));
    EXPECT_TRUE(message.has_hello()) << message.DebugString();
    return message.hello();
  }

  bool write(const wire::ClientMessage& message) { return stream_->Write(message); }

  // Sends a batch and its payloads, each split into the given chunks.
  void batch(const wire::Batch& batch, const std::vector<std::vector<std::string>>& payloads) {
    wire::ClientMessage message;
    ASSERT_TRUE(batch.SerializeToString(message.mutable_batch()));
    message.set_payload_count(static_cast<uint32_t>(payloads.size()));
    ASSERT_TRUE(write(message));
    for (const auto& chunks : payloads) {
      for (size_t i = 0; i < chunks.size(); ++i) {
        size_t total = 0;
        for (const auto& c : chunks) total += c.size();
        ASSERT_TRUE(write(chunk_message(chunks[i], i + 1 == chunks.size(), i == 0 ? total : 0)));
      }
    }
  }

  // Sends a request and reads its response, and its payload when one follows.
  wire::Response request(const wire::Request& request, std::string* payload = nullptr,
                         bool* has_payload = nullptr) {
    wire::ClientMessage message;
    EXPECT_TRUE(request.SerializeToString(message.mutable_request()));
    EXPECT_TRUE(write(message));
    wire::ServerMessage reply;
    // Every batch sent before is acknowledged (batch_done) ahead of the response.
    do {
      EXPECT_TRUE(stream_->Read(&reply));
      if (reply.has_batch_done()) ++batches_done;
    } while (reply.has_batch_done());
    EXPECT_EQ(reply.kind_case(), wire::ServerMessage::kResponse) << reply.DebugString();
    wire::Response response;
    EXPECT_TRUE(response.ParseFromString(reply.response()));
    if (has_payload) *has_payload = reply.has_payload();
    chunk_sizes.clear();
    if (reply.has_payload()) {
      std::string bytes;
      while (true) {
        wire::ServerMessage chunk;
        if (!stream_->Read(&chunk)) {
          ADD_FAILURE() << "the stream ended inside a payload";
          break;
        }
        EXPECT_TRUE(chunk.has_chunk()) << chunk.DebugString();
        chunk_sizes.push_back(chunk.chunk().data().size());
        bytes += chunk.chunk().data();
        if (chunk.chunk().last()) break;
      }
      if (payload) *payload = std::move(bytes);
    }
    return response;
  }

  wire::Response sync() {
    wire::Request request;
    request.mutable_sync();
    bool has_payload = true;
    wire::Response response = this->request(request, nullptr, &has_payload);
    EXPECT_FALSE(has_payload);
    return response;
  }

  // Downloads `ref`; expects no error of any kind.
  std::string download(const wire::TensorRef& ref) {
    wire::Request request;
    *request.mutable_download()->mutable_source() = ref;
    std::string payload;
    bool has_payload = false;
    wire::Response response = this->request(request, &payload, &has_payload);
    EXPECT_TRUE(has_payload);
    EXPECT_FALSE(response.has_error()) << response.error().message();
    EXPECT_FALSE(response.has_pending_error()) << response.pending_error().message();
    return payload;
  }

  // Waits for the server to end the stream (after an error or a refusal).
  grpc::Status ended_by_server() {
    wire::ServerMessage message;
    while (stream_->Read(&message)) {
    }
    return stream_->Finish();
  }

  // Ends the stream as a vanished client would: cancelled, not closed.
  void cancel() { context_.TryCancel(); }

  // Closes the stream from this side, as a client does when it is done.
  grpc::Status close() {
    stream_->WritesDone();
    return ended_by_server();
  }

  std::vector<size_t> chunk_sizes;  // of the last response payload
  int batches_done = 0;             // batch_done acknowledgements seen

 private:
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReaderWriter<wire::ClientMessage, wire::ServerMessage>> stream_;
};

class ServiceTest : public ::testing::Test {
 protected:
  void SetUp() override { start(kToken); }

  void TearDown() override {
    if (server_) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  }

  void start(const std::string& token, int max_sessions = 64, const std::string& state_dir = "") {
    if (server_) server_->Shutdown();
    ServiceOptions options;
    options.token = token;
    options.max_sessions = max_sessions;
    options.state_dir = state_dir;
    // Two CPU slots named like a GPU machine's, as the mock provider does:
    // the names must reach the client unchanged.
    options.executor.devices = {c10::Device(c10::kCPU), c10::Device(c10::kCPU)};
    options.executor.device_names = {"cuda:0", "cpu"};
    options.executor.memory_limit_bytes = 256 * kMiB;
    service_ = std::make_unique<MycelyaService>(options);
    const std::string address = "unix:" + socket_path();
    grpc::ServerBuilder builder;
    builder.AddListeningPort(address, grpc::InsecureServerCredentials());
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr) << "cannot listen on " << address;
    stub_ =
        wire::Mycelya::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  }

  std::unique_ptr<SessionClient> session(
      const std::optional<std::string>& authorization = bearer(kToken)) {
    return std::make_unique<SessionClient>(stub_.get(), authorization);
  }

  grpc::Status health(wire::HealthResponse* response,
                      const std::optional<std::string>& authorization = bearer(kToken)) {
    grpc::ClientContext context;
    if (authorization) context.AddMetadata("authorization", *authorization);
    return stub_->Health(&context, wire::HealthRequest(), response);
  }

  uint32_t open_sessions() {
    wire::HealthResponse response;
    EXPECT_TRUE(health(&response).ok());
    return response.sessions();
  }

  std::unique_ptr<MycelyaService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<wire::Mycelya::Stub> stub_;
};

TEST_F(ServiceTest, SessionWithoutATokenIsUnauthenticated) {
  grpc::Status status = session(std::nullopt)->ended_by_server();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_NE(status.error_message().find("Bearer"), std::string::npos) << status.error_message();
  EXPECT_EQ(open_sessions(), 0u);
}

TEST_F(ServiceTest, SessionWithTheWrongTokenIsUnauthenticated) {
  for (const std::string& authorization :
       {bearer("wrong"), bearer(std::string(kToken) + "x"), std::string(kToken), bearer("")}) {
    EXPECT_EQ(session(authorization)->ended_by_server().error_code(),
              grpc::StatusCode::UNAUTHENTICATED)
        << authorization;
  }
}

TEST_F(ServiceTest, HealthWithoutOrWithTheWrongTokenIsUnauthenticated) {
  wire::HealthResponse response;
  EXPECT_EQ(health(&response, std::nullopt).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(health(&response, bearer("wrong")).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(health(&response, std::string(kToken)).error_code(), grpc::StatusCode::UNAUTHENTICATED);
}

TEST_F(ServiceTest, WithoutAServerTokenNoneIsNeeded) {
  start("");
  wire::HealthResponse response;
  EXPECT_TRUE(health(&response, std::nullopt).ok());
  auto client = session(std::nullopt);
  EXPECT_EQ(client->hello().devices_size(), 2);
  EXPECT_TRUE(client->close().ok());
}

TEST_F(ServiceTest, AClientOfAnotherTorchIsRefusedNamingBothVersions) {
  const std::string protocol = std::to_string(wire::PROTOCOL_VERSION_CURRENT);
  auto old_torch = std::make_unique<SessionClient>(stub_.get(), bearer(kToken),
                                                   std::make_pair(protocol, "2.12.1"));
  const grpc::Status status = old_torch->ended_by_server();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_TRUE(Contains(status.error_message(), "client runs torch 2.12.1"))
      << status.error_message();
  EXPECT_TRUE(Contains(status.error_message(), "server torch " + torch_version()));
  EXPECT_TRUE(Contains(status.error_message(), "pip install torch==" + torch_version()));
  EXPECT_EQ(open_sessions(), 0u);

  // Another patch release or build (a CUDA wheel) of the same major.minor is served.
  const std::string same_minor = major_minor(torch_version()) + ".9+cu128";
  auto patch = std::make_unique<SessionClient>(stub_.get(), bearer(kToken),
                                               std::make_pair(protocol, same_minor));
  EXPECT_EQ(patch->hello().torch_version(), torch_version());
  EXPECT_TRUE(patch->close().ok());
}

TEST_F(ServiceTest, AClientOfAnotherProtocolOrNoVersionsIsRefused) {
  auto other = std::make_unique<SessionClient>(stub_.get(), bearer(kToken),
                                               std::make_pair("1", torch_version()));
  grpc::Status status = other->ended_by_server();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_TRUE(Contains(status.error_message(), "protocol version 1")) << status.error_message();

  for (const char* garbage : {"", "two", "99999999999999999999"}) {
    auto bad = std::make_unique<SessionClient>(stub_.get(), bearer(kToken),
                                               std::make_pair(garbage, torch_version()));
    EXPECT_EQ(bad->ended_by_server().error_code(), grpc::StatusCode::FAILED_PRECONDITION)
        << garbage;
  }
  auto old = std::make_unique<SessionClient>(stub_.get(), bearer(kToken), std::nullopt);
  status = old->ended_by_server();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_TRUE(Contains(status.error_message(), "did not send its protocol and torch versions"));
}

TEST_F(ServiceTest, SessionsBeyondTheLimitAreRefusedUntilOneEnds) {
  start(kToken, /*max_sessions=*/2);
  auto first = session();
  auto second = session();
  first->hello();
  second->hello();
  auto third = session();
  const grpc::Status status = third->ended_by_server();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_TRUE(Contains(status.error_message(), "--max-sessions")) << status.error_message();
  EXPECT_EQ(open_sessions(), 2u);

  EXPECT_TRUE(first->close().ok());
  auto fourth = session();
  fourth->hello();
  EXPECT_TRUE(fourth->close().ok());
  EXPECT_TRUE(second->close().ok());
}

TEST_F(ServiceTest, HealthAndHelloTellTheVersions) {
  wire::HealthResponse response;
  ASSERT_TRUE(health(&response).ok());
  EXPECT_EQ(response.protocol_version(), static_cast<uint32_t>(wire::PROTOCOL_VERSION_CURRENT));
  EXPECT_EQ(response.torch_version(), torch_version());
  auto client = session();
  const wire::Hello hello = client->hello();
  EXPECT_EQ(hello.version(), static_cast<uint32_t>(wire::PROTOCOL_VERSION_CURRENT));
  EXPECT_EQ(hello.torch_version(), torch_version());
  EXPECT_TRUE(client->close().ok());
}

// Pausing: a session names its state folder with a key; only a well-formed
// key becomes part of a path.
class StateServiceTest : public ServiceTest {
 protected:
  void SetUp() override {
    const char* base = std::getenv("TEST_TMPDIR");
    state_dir_ = std::string(base ? base : "/tmp") + "/service-state-XXXXXX";
    ASSERT_NE(mkdtemp(state_dir_.data()), nullptr);
    start(kToken, 64, state_dir_);
  }

  std::unique_ptr<SessionClient> session_with_key(const std::string& key) {
    return std::make_unique<SessionClient>(
        stub_.get(), bearer(kToken),
        std::make_pair(std::to_string(wire::PROTOCOL_VERSION_CURRENT), torch_version()), key);
  }

  std::string file_in(const std::string& key, const std::string& name) const {
    return state_dir_ + "/" + key + "/" + name;
  }

  std::string state_dir_;
  const std::string key_ = std::string(64, 'c');
};

TEST_F(StateServiceTest, AMalformedStateKeyIsRefusedBeforeAnyPathIsMade) {
  for (const std::string& key : {std::string("../../tmp/x"), std::string(64, '.'),
                                 "../" + std::string(61, 'a'), std::string(63, 'a')}) {
    const grpc::Status status = session_with_key(key)->ended_by_server();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << key;
    EXPECT_TRUE(Contains(status.error_message(), kStateKeyMetadataKey));
  }
  EXPECT_EQ(read_whole(state_dir_ + "/../x"), "");
}

TEST_F(StateServiceTest, AVanishedClientsSessionIsSavedAClosedOneIsNot) {
  const wire::TensorRef ref = contiguous_ref(1, {4, 4});
  const std::string bytes = pattern(64, 3);
  {
    auto closed = session_with_key(key_);
    closed->hello();
    closed->batch(upload_batch({ref}), {{bytes}});
    closed->download(ref);
    EXPECT_TRUE(closed->close().ok());
  }
  EXPECT_EQ(read_whole(file_in(key_, "1.storage")), "");  // ended on purpose: nothing kept

  auto vanished = session_with_key(key_);
  vanished->hello();
  vanished->batch(upload_batch({ref}), {{bytes}});
  vanished->download(ref);
  vanished->cancel();
  for (int i = 0; i < 500 && open_sessions() > 0; ++i) usleep(10000);
  EXPECT_NE(read_whole(file_in(key_, "1.storage")), "");

  // A new session with the key takes the storage back.
  auto resumed = session_with_key(key_);
  resumed->hello();
  wire::Request restore;
  restore.mutable_restore_state();
  const wire::Response response = resumed->request(restore);
  ASSERT_FALSE(response.has_error()) << response.error().message();
  ASSERT_EQ(response.state().storage_ids_size(), 1);
  EXPECT_EQ(resumed->download(ref), bytes);
}

TEST_F(StateServiceTest, OneSessionPerStateKeyAtATime) {
  auto first = session_with_key(key_);
  first->hello();
  const grpc::Status second = session_with_key(key_)->ended_by_server();
  EXPECT_EQ(second.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_TRUE(Contains(second.error_message(), "same state key"));
  EXPECT_TRUE(first->close().ok());
  for (int i = 0; i < 500 && open_sessions() > 0; ++i) usleep(10000);
  auto third = session_with_key(key_);
  EXPECT_EQ(third->hello().devices_size(), 2);
}

TEST_F(ServiceTest, WithoutAStateFolderASessionCannotPause) {
  auto client = session();
  client->hello();
  wire::Request save;
  save.mutable_save_state();
  const wire::Response response = client->request(save);
  ASSERT_TRUE(response.has_error());
  EXPECT_TRUE(Contains(response.error().message(), "--state-dir"));
}

TEST_F(ServiceTest, FirstMessageIsHelloWithTheDevices) {
  auto client = session();
  const wire::Hello hello = client->hello();
  EXPECT_EQ(hello.version(), static_cast<uint32_t>(wire::PROTOCOL_VERSION_CURRENT));
  ASSERT_EQ(hello.devices_size(), 2);
  EXPECT_EQ(hello.devices(0), "cuda:0");
  EXPECT_EQ(hello.devices(1), "cpu");
  EXPECT_TRUE(client->close().ok());
}

TEST_F(ServiceTest, LargeUploadInChunksDownloadsTheSameBytesInChunks) {
  const uint64_t nbytes = 9 * kMiB;
  const std::string bytes = pattern(nbytes, 1);
  auto client = session();
  client->hello();
  client->batch(upload_batch({byte_ref(1, nbytes)}), {split(bytes, kMiB)});

  const std::string downloaded = client->download(byte_ref(1, nbytes));
  EXPECT_EQ(downloaded.size(), bytes.size());
  EXPECT_TRUE(downloaded == bytes);
  EXPECT_EQ(client->chunk_sizes.size(), (nbytes + kPayloadChunkBytes - 1) / kPayloadChunkBytes);
  EXPECT_EQ(client->batches_done, 1);  // the upload's batch was acknowledged
  for (size_t size : client->chunk_sizes) EXPECT_LE(size, kPayloadChunkBytes);
  EXPECT_TRUE(client->close().ok());
}

TEST_F(ServiceTest, BatchWithSeveralPayloadsOfUnevenChunks) {
  const std::string first = pattern(3000, 2);
  const std::string second = pattern(17, 3);
  auto client = session();
  client->hello();
  client->batch(
      upload_batch({byte_ref(2, first.size()), byte_ref(3, second.size()), byte_ref(4, 0)}),
      {{first.substr(0, 1000), first.substr(1000, 1500), first.substr(2500)}, {second}, {""}});
  EXPECT_FALSE(client->sync().has_pending_error());
  EXPECT_TRUE(client->download(byte_ref(2, first.size())) == first);
  EXPECT_TRUE(client->download(byte_ref(3, second.size())) == second);
  // An empty payload is still one (empty) chunk marked last.
  EXPECT_EQ(client->download(byte_ref(4, 0)), "");
  EXPECT_EQ(client->chunk_sizes, std::vector<size_t>{0});
  EXPECT_TRUE(client->close().ok());
}

TEST_F(ServiceTest, ConcurrentSessionsDoNotShareStorages) {
  const uint64_t nbytes = 4096;
  const std::string mine = pattern(nbytes, 4);
  auto a = session();
  auto b = session();
  a->hello();
  b->hello();
  // B's storage 5 exists (uninitialized) before the pattern was ever sent, so
  // its bytes cannot be the pattern left behind in freed memory.
  const std::string before = b->download(byte_ref(5, nbytes));

  a->batch(upload_batch({byte_ref(5, nbytes)}), {{mine}});
  EXPECT_TRUE(a->download(byte_ref(5, nbytes)) == mine);

  const std::string seen_by_b = b->download(byte_ref(5, nbytes));
  EXPECT_TRUE(seen_by_b != mine);
  EXPECT_TRUE(seen_by_b == before);

  // And the other way round: B writing its storage 5 leaves A's alone.
  b->batch(upload_batch({byte_ref(5, nbytes)}), {{pattern(nbytes, 5)}});
  EXPECT_TRUE(b->download(byte_ref(5, nbytes)) == pattern(nbytes, 5));
  EXPECT_TRUE(a->download(byte_ref(5, nbytes)) == mine);
  EXPECT_TRUE(a->close().ok());
  EXPECT_TRUE(b->close().ok());
}

TEST_F(ServiceTest, OpErrorIsThePendingErrorOfTheNextResponse) {
  auto client = session();
  client->hello();
  client->batch(failing_mm_batch(), {});

  const wire::Response first = client->sync();
  ASSERT_TRUE(first.has_pending_error());
  EXPECT_EQ(first.pending_error().op_name(), "aten::mm");
  EXPECT_FALSE(first.pending_error().message().empty());
  EXPECT_FALSE(first.has_error());
  EXPECT_FALSE(client->sync().has_pending_error());
  EXPECT_TRUE(client->close().ok());
}

TEST_F(ServiceTest, FailedDownloadStillSendsAnEmptyPayload) {
  auto client = session();
  client->hello();
  wire::Request request;
  *request.mutable_download()->mutable_source() = byte_ref(1, 16);
  request.mutable_download()->mutable_source()->set_device(7);  // no such slot
  std::string payload = "untouched";
  bool has_payload = false;
  const wire::Response response = client->request(request, &payload, &has_payload);
  EXPECT_TRUE(response.has_error());
  EXPECT_TRUE(has_payload);
  EXPECT_EQ(payload, "");
  EXPECT_TRUE(client->close().ok());
}

TEST_F(ServiceTest, HealthCountsOpenSessions) {
  wire::HealthResponse response;
  ASSERT_TRUE(health(&response).ok());
  EXPECT_TRUE(response.serving());
  ASSERT_EQ(response.devices_size(), 2);
  EXPECT_EQ(response.devices(0), "cuda:0");
  EXPECT_EQ(response.devices(1), "cpu");
  EXPECT_EQ(response.sessions(), 0u);

  auto a = session();
  a->hello();
  EXPECT_EQ(open_sessions(), 1u);
  auto b = session();
  b->hello();
  EXPECT_EQ(open_sessions(), 2u);
  EXPECT_EQ(service_->open_sessions(), 2);
  // The status reaches the client only after the session (and its executor)
  // is gone, so the count has dropped by then.
  EXPECT_TRUE(a->close().ok());
  EXPECT_EQ(open_sessions(), 1u);
  EXPECT_TRUE(b->close().ok());
  EXPECT_EQ(open_sessions(), 0u);
}

TEST_F(ServiceTest, ChunkWithoutABatchIsInvalidArgument) {
  auto client = session();
  client->hello();
  client->write(chunk_message("stray", true));
  grpc::Status status = client->ended_by_server();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(status.error_message().find("outside a batch"), std::string::npos)
      << status.error_message();
  EXPECT_EQ(open_sessions(), 0u);
}

TEST_F(ServiceTest, ChunkBeyondTheBatchPayloadCountIsInvalidArgument) {
  auto client = session();
  client->hello();
  client->batch(upload_batch({byte_ref(1, 4)}), {{"ab", "cd"}});
  client->write(chunk_message("extra", true));
  EXPECT_EQ(client->ended_by_server().error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(ServiceTest, RequestInsideABatchsPayloadsIsInvalidArgument) {
  auto client = session();
  client->hello();
  wire::ClientMessage batch;
  batch.set_batch("");
  batch.set_payload_count(2);
  client->write(batch);
  client->write(chunk_message("x", true));
  wire::ClientMessage request;
  request.set_request("");
  client->write(request);
  grpc::Status status = client->ended_by_server();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(status.error_message().find("payload 2 of 2"), std::string::npos)
      << status.error_message();
}

TEST_F(ServiceTest, EmptyMessageIsInvalidArgument) {
  auto client = session();
  client->hello();
  client->write(wire::ClientMessage());
  EXPECT_EQ(client->ended_by_server().error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(ServiceTest, PayloadCountOnARequestIsInvalidArgument) {
  auto client = session();
  client->hello();
  wire::ClientMessage request;
  request.set_request("");
  request.set_payload_count(1);
  client->write(request);
  EXPECT_EQ(client->ended_by_server().error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(ServiceTest, ClosingInsideAPayloadIsInvalidArgument) {
  auto client = session();
  client->hello();
  wire::ClientMessage batch;
  batch.set_batch("");
  batch.set_payload_count(1);
  client->write(batch);
  client->write(chunk_message("not last", false));
  EXPECT_EQ(client->close().error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

// Read: a download beside the stream, answered once its command has run.
class ReadTest : public ServiceTest {
 protected:
  grpc::Status read(const std::string& key, uint64_t after_command, const wire::TensorRef& source,
                    wire::Response* response, std::string* payload,
                    const std::optional<std::string>& authorization = bearer(kToken)) {
    wire::Request request;
    *request.mutable_download()->mutable_source() = source;
    wire::ReadRequest read;
    read.set_session_key(key);
    read.set_after_command(after_command);
    read.set_request(request.SerializeAsString());
    grpc::ClientContext context;
    if (authorization) context.AddMetadata("authorization", *authorization);
    wire::ReadResponse answer;
    grpc::Status status = stub_->Read(&context, read, &answer);
    if (status.ok()) {
      EXPECT_TRUE(response->ParseFromString(answer.response()));
      *payload = answer.payload();
    }
    return status;
  }

  // Waits until `count` reads wait for their command on the server.
  bool reads_wait(size_t count) {
    for (int i = 0; i < 1000 && service_->reads_waiting() != count; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return service_->reads_waiting() == count;
  }
};

TEST_F(ReadTest, EachSessionHasItsOwnKey) {
  auto a = session();
  auto b = session();
  const std::string key_a = a->hello().session_key();
  const std::string key_b = b->hello().session_key();
  EXPECT_GE(key_a.size(), 32u);
  EXPECT_NE(key_a, key_b);
  EXPECT_TRUE(a->close().ok());
  EXPECT_TRUE(b->close().ok());
}

TEST_F(ReadTest, ReadWaitsForItsCommandThenAnswersWithoutTheStream) {
  const uint64_t nbytes = 64;
  auto client = session();
  const std::string key = client->hello().session_key();
  client->batch(upload_batch({byte_ref(5, nbytes)}), {{pattern(nbytes, 1)}});  // command 1

  wire::Response response;
  std::string payload;
  ASSERT_TRUE(read(key, 1, byte_ref(5, nbytes), &response, &payload).ok());
  EXPECT_FALSE(response.has_error()) << response.error().message();
  EXPECT_TRUE(payload == pattern(nbytes, 1));

  // Command 3 has not been sent: the read waits for it.
  std::atomic<bool> answered{false};
  wire::Response later;
  std::string later_payload;
  grpc::Status later_status;
  std::thread reader([&] {
    later_status = read(key, 3, byte_ref(5, nbytes), &later, &later_payload);
    answered = true;
  });
  ASSERT_TRUE(reads_wait(1));
  EXPECT_FALSE(answered.load());
  wire::Batch batch = upload_batch({byte_ref(6, nbytes), byte_ref(5, nbytes)});  // commands 2, 3
  client->batch(batch, {{pattern(nbytes, 2)}, {pattern(nbytes, 3)}});
  reader.join();
  ASSERT_TRUE(later_status.ok()) << later_status.error_message();
  EXPECT_TRUE(later_payload == pattern(nbytes, 3));
  // The stream answers as ever, and in step: both batches acknowledged.
  EXPECT_TRUE(client->download(byte_ref(6, nbytes)) == pattern(nbytes, 2));
  EXPECT_EQ(client->batches_done, 2);
  EXPECT_TRUE(client->close().ok());
}

TEST_F(ReadTest, ReadReportsAFailedOpLikeAnyResponse) {
  auto client = session();
  const std::string key = client->hello().session_key();
  client->batch(failing_mm_batch(), {});

  wire::Response response;
  std::string payload;
  ASSERT_TRUE(read(key, 1, contiguous_ref(3, {2, 5}), &response, &payload).ok());
  ASSERT_TRUE(response.has_pending_error());
  EXPECT_EQ(response.pending_error().op_name(), "aten::mm");
  // The output of the failed op is poisoned, never garbage.
  ASSERT_TRUE(response.has_error());
  EXPECT_NE(response.error().message().find("aten::mm"), std::string::npos)
      << response.error().message();
  // Reported once: the stream's next response has no pending error left.
  EXPECT_FALSE(client->sync().has_pending_error());
  EXPECT_TRUE(client->close().ok());
}

TEST_F(ReadTest, ReadNeedsTheTokenAndAnOpenSessionsKey) {
  auto a = session();
  auto b = session();
  const std::string key_a = a->hello().session_key();
  const std::string key_b = b->hello().session_key();
  a->batch(upload_batch({byte_ref(5, 16)}), {{pattern(16, 1)}});
  b->batch(upload_batch({byte_ref(5, 16)}), {{pattern(16, 2)}});
  wire::Response response;
  std::string payload;
  // Each key reads its own session's storage 5.
  ASSERT_TRUE(read(key_a, 1, byte_ref(5, 16), &response, &payload).ok());
  EXPECT_TRUE(payload == pattern(16, 1));
  ASSERT_TRUE(read(key_b, 1, byte_ref(5, 16), &response, &payload).ok());
  EXPECT_TRUE(payload == pattern(16, 2));

  EXPECT_EQ(read(key_a, 1, byte_ref(5, 16), &response, &payload, std::nullopt).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(read("not-a-key", 0, byte_ref(5, 16), &response, &payload).error_code(),
            grpc::StatusCode::NOT_FOUND);
  EXPECT_TRUE(a->close().ok());
  EXPECT_EQ(read(key_a, 0, byte_ref(5, 16), &response, &payload).error_code(),
            grpc::StatusCode::NOT_FOUND);
  EXPECT_TRUE(b->close().ok());
}

TEST_F(ReadTest, ReadAnswersDownloadsOnly) {
  auto client = session();
  const std::string key = client->hello().session_key();
  wire::Request sync;
  sync.mutable_sync();
  wire::ReadRequest read;
  read.set_session_key(key);
  read.set_request(sync.SerializeAsString());
  grpc::ClientContext context;
  context.AddMetadata("authorization", bearer(kToken));
  wire::ReadResponse answer;
  EXPECT_EQ(stub_->Read(&context, read, &answer).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(client->close().ok());
}

TEST_F(ReadTest, ReadIsServedBetweenTheCommandsOfABatch) {
  // The server answers at the first point after the read's command, even
  // inside a batch. (A client never names a command before a later one that
  // writes the source; this one does, to show where the read was served.)
  auto client = session();
  const std::string key = client->hello().session_key();
  client->batch(upload_batch({byte_ref(6, 16)}), {{pattern(16, 9)}});  // command 1
  wire::Response response;
  std::string payload;
  grpc::Status status;
  std::thread reader([&] { status = read(key, 2, byte_ref(5, 16), &response, &payload); });
  ASSERT_TRUE(reads_wait(1));
  wire::Batch batch = upload_batch({byte_ref(5, 16), byte_ref(5, 16)});  // commands 2, 3
  client->batch(batch, {{pattern(16, 2)}, {pattern(16, 3)}});
  reader.join();
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_TRUE(payload == pattern(16, 2));
  EXPECT_TRUE(client->download(byte_ref(5, 16)) == pattern(16, 3));
  EXPECT_TRUE(client->close().ok());
}

TEST_F(ReadTest, WaitingReadFailsWhenItsSessionEnds) {
  auto client = session();
  const std::string key = client->hello().session_key();
  grpc::Status status;
  std::thread reader([&] {
    wire::Response response;
    std::string payload;
    status = read(key, 10, byte_ref(5, 16), &response, &payload);  // never sent
  });
  ASSERT_TRUE(reads_wait(1));
  EXPECT_TRUE(client->close().ok());
  reader.join();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
  EXPECT_NE(status.error_message().find("ended"), std::string::npos) << status.error_message();
}

TEST_F(ReadTest, AfterABatchThatCannotBeDecodedReadsAreRefused) {
  auto client = session();
  const std::string key = client->hello().session_key();
  wire::ClientMessage garbage;
  garbage.set_batch("\xff\xff\xff");
  ASSERT_TRUE(client->write(garbage));
  // The stream reports the bad batch once and serves on...
  EXPECT_TRUE(client->sync().has_pending_error());
  // ...but command numbers mean nothing now: the client must read in order.
  wire::Response response;
  std::string payload;
  EXPECT_EQ(read(key, 0, byte_ref(5, 16), &response, &payload).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_TRUE(client->close().ok());
}

// ---------------------------------------------------------------------------
// The binary, end to end.

class BinaryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (ServerProcess::binary().empty()) GTEST_SKIP() << "needs bazel test's runfiles";
  }

  static grpc::Status health(const std::string& address, const std::string& token,
                             wire::HealthResponse* response) {
    auto stub =
        wire::Mycelya::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
    grpc::ClientContext context;
    context.AddMetadata("authorization", bearer(token));
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    return stub->Health(&context, wire::HealthRequest(), response);
  }
};

TEST_F(BinaryTest, PrintsThePickedPortServesAndStopsOnSigterm) {
  ServerProcess server({"--listen", "127.0.0.1:0", "--devices=cpu"}, {"MYCELYA_TOKEN=e2e"});
  ASSERT_TRUE(server.started());
  const std::string address = address_of(server.read_line());
  ASSERT_EQ(address.rfind("127.0.0.1:", 0), 0u) << address;
  EXPECT_GT(std::stoi(address.substr(10)), 0);

  wire::HealthResponse response;
  ASSERT_TRUE(health(address, "e2e", &response).ok());
  EXPECT_TRUE(response.serving());
  ASSERT_EQ(response.devices_size(), 1);
  EXPECT_EQ(response.devices(0), "cpu");
  EXPECT_EQ(health(address, "wrong", &response).error_code(), grpc::StatusCode::UNAUTHENTICATED);

  // An open session must not keep the server from stopping.
  auto stub =
      wire::Mycelya::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  SessionClient client(stub.get(), bearer("e2e"));
  EXPECT_EQ(client.hello().devices(0), "cpu");
  ASSERT_EQ(kill(server.pid(), SIGTERM), 0);
  EXPECT_FALSE(client.ended_by_server().ok());
  EXPECT_EQ(server.wait(), std::optional<int>(0));
}

TEST_F(BinaryTest, IdleTimeoutStopsAServerNobodyUsesWithALogLine) {
  const std::string log = ::testing::TempDir() + "/idle.log";
  const auto started = std::chrono::steady_clock::now();
  ServerProcess server({"--listen", "127.0.0.1:0", "--devices=cpu", "--idle-timeout=1"},
                       {"MYCELYA_TOKEN=idle"}, ServerProcess::binary(), log);
  ASSERT_FALSE(address_of(server.read_line()).empty());
  EXPECT_EQ(server.wait(), std::optional<int>(0));
  EXPECT_GE(std::chrono::steady_clock::now() - started, std::chrono::seconds(1));
  EXPECT_TRUE(Contains(read_whole(log), "no client activity for 1 s (--idle-timeout), stopping"));
}

TEST_F(BinaryTest, InvalidUtf8InAMessageIsRefusedWithoutALogLineForEach) {
  // Protobuf logged a line per invalid UTF-8 string it parsed: a client could
  // fill the server's disk a few bytes at a time.
  const std::string log = ::testing::TempDir() + "/utf8.log";
  ServerProcess server({"--listen", "127.0.0.1:0", "--devices=cpu"}, {"MYCELYA_TOKEN=utf8"},
                       ServerProcess::binary(), log);
  const std::string address = address_of(server.read_line());
  ASSERT_FALSE(address.empty());
  auto stub =
      wire::Mycelya::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  SessionClient client(stub.get(), bearer("utf8"));
  client.hello();
  wire::Batch batch;
  batch.add_commands()->mutable_op()->set_op_name("aten::\xff\xfe");
  wire::Request sync;
  sync.mutable_sync();
  for (int i = 0; i < 20; ++i) {
    client.batch(batch, {});
    EXPECT_TRUE(client.request(sync).has_pending_error());
  }
  EXPECT_TRUE(client.close().ok());
  ASSERT_EQ(kill(server.pid(), SIGTERM), 0);
  EXPECT_EQ(server.wait(), std::optional<int>(0));
  EXPECT_FALSE(Contains(read_whole(log), "UTF-8"));
}

TEST_F(BinaryTest, ASessionThatKeepsTalkingKeepsTheServerThenItsSilenceStopsIt) {
  // A message every 100 ms and a sync's round trip: at most 0.11 s apart
  // here under load, over 5x less than the timeout.
  constexpr int kIdleSeconds = 2;
  ServerProcess server({"--listen", "127.0.0.1:0", "--devices=cpu",
                        "--idle-timeout=" + std::to_string(kIdleSeconds)},
                       {"MYCELYA_TOKEN=idle"});
  const std::string address = address_of(server.read_line());
  ASSERT_FALSE(address.empty());
  auto stub =
      wire::Mycelya::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  SessionClient client(stub.get(), bearer("idle"));
  client.hello();
  // Talking for two and a half idle timeouts, the session keeps the server.
  const auto talk_until =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(2500 * kIdleSeconds);
  while (std::chrono::steady_clock::now() < talk_until) {
    EXPECT_FALSE(client.sync().has_error());
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(server.wait(std::chrono::seconds(0)), std::nullopt);
  // An open session that says nothing does not keep it.
  EXPECT_EQ(server.wait(), std::optional<int>(0));
  EXPECT_FALSE(client.ended_by_server().ok());
}

TEST_F(BinaryTest, UnixSocketTokenFileAndSigint) {
  const std::string path = socket_path();
  const std::string token_file = path + ".token";
  std::ofstream(token_file) << "  file-token \n";
  ServerProcess server({"--listen=unix:" + path, "--token-file", token_file}, {});
  ASSERT_TRUE(server.started());
  const std::string address = address_of(server.read_line());
  EXPECT_EQ(address, "unix:" + path);
  wire::HealthResponse response;
  EXPECT_TRUE(health(address, "file-token", &response).ok());
  ASSERT_EQ(kill(server.pid(), SIGINT), 0);
  EXPECT_EQ(server.wait(), std::optional<int>(0));
}

TEST_F(BinaryTest, TokenEnvNamesTheVariable) {
  ServerProcess server({"--token-env", "OTHER_TOKEN"}, {"OTHER_TOKEN=from-env"});
  const std::string address = address_of(server.read_line());
  wire::HealthResponse response;
  EXPECT_TRUE(health(address, "from-env", &response).ok());
  kill(server.pid(), SIGTERM);
  EXPECT_EQ(server.wait(), std::optional<int>(0));
}

TEST_F(BinaryTest, BadInvocationsExitWithTwo) {
  const std::vector<std::vector<std::string>> invocations = {
      {"--listen", "0.0.0.0:0"},  // reachable from elsewhere, no token
      {"--no-such-flag"},
      {"--devices", "cuda:99"},
      {"--devices", "tpu"},
      {"--token-env", "SURELY_UNSET_VARIABLE"},
      {"--max-message-bytes", "12abc"},
      {"--listen"},
  };
  for (const auto& args : invocations) {
    ServerProcess server(args, {});
    ASSERT_TRUE(server.started());
    EXPECT_EQ(server.read_line(), std::nullopt) << args[0];
    EXPECT_EQ(server.wait(), std::optional<int>(2)) << args[0];
  }
}

TEST_F(BinaryTest, HelpExitsWithZero) {
  ServerProcess server({"--help"}, {});
  const std::optional<std::string> first = server.read_line();
  ASSERT_TRUE(first);
  EXPECT_EQ(first->rfind("Usage: mycelya-server", 0), 0u) << *first;
  EXPECT_EQ(server.wait(), std::optional<int>(0));
}

TEST_F(BinaryTest, ExitsWithItsParent) {
  // A shell starts the server (which writes to the same stdout), says its pid,
  // and waits; killing the shell then orphans the server.
  const std::string command =
      "'" + ServerProcess::binary() + "' --exit-with-parent & echo $!; wait";
  ServerProcess shell({"-c", command}, {}, "/bin/sh");
  ASSERT_TRUE(shell.started());
  const std::optional<std::string> pid_line = shell.read_line();
  ASSERT_TRUE(pid_line);
  const pid_t server_pid = std::stoi(*pid_line);
  EXPECT_NE(address_of(shell.read_line()), "");

  ASSERT_EQ(kill(shell.pid(), SIGKILL), 0);
  EXPECT_EQ(shell.wait(), std::optional<int>(-1));
  // Stdout reaches end of file only once the server, its last writer, is gone.
  std::optional<std::string> line;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  do {
    line = shell.read_line(std::chrono::seconds(30));
  } while (line && std::chrono::steady_clock::now() < deadline);
  EXPECT_EQ(line, std::nullopt);
  if (line) kill(server_pid, SIGKILL);  // do not leave it behind when the test fails
}

}  // namespace
}  // namespace mycelya
