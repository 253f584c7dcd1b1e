// SPDX-License-Identifier: AGPL-3.0-or-later
#include "server/service.h"

#include <c10/util/ScopeExit.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <mutex>
#include <stdexcept>
#include <utility>
#include <vector>

#include "proto/handshake.h"
#include "proto/random_key.h"
#include "server/log.h"
#include "server/state_folder.h"

namespace mycelya {
namespace {

using Stream = grpc::ServerReaderWriter<wire::ServerMessage, wire::ClientMessage>;

// Compares every byte whatever the first difference, so response timing does
// not tell an attacker how much of a guessed token was right.
bool constant_time_equal(const std::string& a, const std::string& b) {
  if (a.size() != b.size()) return false;
  unsigned char difference = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    difference |= static_cast<unsigned char>(a[i]) ^ static_cast<unsigned char>(b[i]);
  }
  return difference == 0;
}

const char* kind_name(const wire::ClientMessage& message) {
  switch (message.kind_case()) {
    case wire::ClientMessage::kBatch:
      return "a batch";
    case wire::ClientMessage::kRequest:
      return "a request";
    case wire::ClientMessage::kChunk:
      return "a chunk";
    default:
      return "a message with no kind";
  }
}

grpc::Status violation(const std::string& message) {
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "mycelya protocol violation: " + message);
}

// Where a write fails the stream is already broken (the client went away or
// the server is shutting down), so nobody reads this status; it is for logs.
grpc::Status stream_broken() {
  return grpc::Status(grpc::StatusCode::CANCELLED, "the stream broke while the server wrote to it");
}

// A batch's payloads, read off the stream while the batch runs, each straight
// into the storage its upload writes. Payloads no upload asks for (say, one
// whose target could not be created) are skipped, so the stream stays in step.
class StreamPayloads final : public PayloadSource {
 public:
  StreamPayloads(Stream* stream, uint32_t count) : stream_(stream), count_(count) {}

  void read(uint32_t index, char* dst, size_t size) override {
    if (index < next_ || index >= count_) {
      throw std::runtime_error("upload names payload " + std::to_string(index) + " of " +
                               std::to_string(count_) + ", out of order or missing");
    }
    while (next_ < index) consume(/*keep=*/false, nullptr, 0);
    if (!consume(/*keep=*/true, dst, size)) {
      throw std::runtime_error("upload of " + std::to_string(size) +
                               " bytes carries a payload of another size");
    }
  }

  // Skips what the batch did not read; a broken or malformed stream ends the session.
  grpc::Status finish() {
    try {
      while (status_.ok() && next_ < count_) consume(/*keep=*/false, nullptr, 0);
    } catch (const std::exception&) {
      // consume() has recorded the violation in status_.
    }
    return status_;
  }

 private:
  // Reads payload next_ into dst, or discards it. Returns whether it had
  // exactly `size` bytes; nothing is written to dst otherwise.
  bool consume(bool keep, char* dst, size_t size) {
    const std::string which =
        "payload " + std::to_string(next_ + 1) + " of " + std::to_string(count_) + " of a batch";
    ++next_;
    wire::ClientMessage message;
    bool fits = keep;
    size_t offset = 0;
    for (bool first = true;; first = false) {
      if (!status_.ok()) throw std::runtime_error(status_.error_message());
      if (!stream_->Read(&message)) {
        status_ = violation("the stream ended inside " + which);
      } else if (!message.has_chunk()) {
        status_ =
            violation(std::string("expected a chunk of ") + which + ", got " + kind_name(message));
      } else if (message.payload_count() != 0) {
        status_ = violation("payload_count is only valid with a batch");
      }
      if (!status_.ok()) throw std::runtime_error(status_.error_message());
      const wire::PayloadChunk& chunk = message.chunk();
      if (first) fits = fits && chunk.total_bytes() == size;
      fits = fits && offset + chunk.data().size() <= size;
      // An empty chunk of an empty payload: dst may be null.
      if (fits && !chunk.data().empty()) {
        std::memcpy(dst + offset, chunk.data().data(), chunk.data().size());
      }
      offset += chunk.data().size();
      if (chunk.last()) return fits && offset == size;
    }
  }

  Stream* stream_;
  const uint32_t count_;
  uint32_t next_ = 0;
  grpc::Status status_;
};

// Sends a response payload as chunks of at most kPayloadChunkBytes; an empty payload
// is still one chunk, so the client always waits for exactly one `last`.
bool write_payload(Stream* stream, const Payload& payload) {
  return write_payload_chunks<wire::ServerMessage>(
      payload.data(), payload.size(),
      [stream](const wire::ServerMessage& message) { return stream->Write(message); });
}

// Marks the session thread's use of the executor, for EarlyReads and for
// the idle watch, which must not stop a server in the middle of work.
class Executing {
 public:
  Executing(EarlyReads& reads, std::atomic<int>& working) : reads_(reads), working_(working) {
    reads_.begin_executing();
    ++working_;
  }
  ~Executing() {
    --working_;
    reads_.end_executing();
  }
  Executing(const Executing&) = delete;
  Executing& operator=(const Executing&) = delete;

 private:
  EarlyReads& reads_;
  std::atomic<int>& working_;
};

// The message loop of one session, after the hello.
grpc::Status serve(Executor& executor, EarlyReads& early_reads, Stream* stream,
                   std::atomic<int>& working, const std::function<void()>& note_activity) {
  wire::ClientMessage message;
  while (stream->Read(&message)) {
    note_activity();
    switch (message.kind_case()) {
      case wire::ClientMessage::kBatch: {
        const std::string batch = std::move(*message.mutable_batch());
        StreamPayloads payloads(stream, message.payload_count());
        {
          Executing executing(early_reads, working);
          executor.run_batch(batch, payloads);
        }
        note_activity();  // the idle time counts from the end of the work
        grpc::Status status = payloads.finish();
        if (!status.ok()) return status;
        // The client bounds its unacknowledged batches by these (two, or up to
        // 256 on a slow link; see kMaxBatchesInFlight), so it must come now:
        // a batch_done held back stalls the client's sender.
        wire::ServerMessage done;
        done.set_batch_done(true);
        if (!stream->Write(done, grpc::WriteOptions().clear_buffer_hint())) return stream_broken();
        break;
      }
      case wire::ClientMessage::kRequest: {
        if (message.payload_count() != 0) {
          return violation("payload_count is only valid with a batch");
        }
        Payload payload;
        wire::ServerMessage reply;
        {
          Executing executing(early_reads, working);
          reply.set_response(executor.handle_request(message.request(), &payload));
        }
        note_activity();
        // A failed download still sends its (empty) payload: the executor says.
        reply.set_has_payload(payload.follows);
        // The client is blocked on this answer: send it now, not when gRPC
        // would find it convenient to.
        if (!stream->Write(reply, grpc::WriteOptions().clear_buffer_hint())) {
          return stream_broken();
        }
        if (payload.follows && !write_payload(stream, payload)) return stream_broken();
        break;
      }
      case wire::ClientMessage::kChunk:
        return violation(
            "a payload chunk arrived outside a batch (more chunks than the batch's payload_count, "
            "or a chunk after a payload's last one)");
      default:
        return violation("a ClientMessage with none of batch, request or chunk set");
    }
  }
  // Read fails when the client half-closes, cancels or disconnects; in every
  // case there is nobody left to serve.
  return grpc::Status::OK;
}

// Counts a session while it lives, if it is within the server's limit.
class OpenSession {
 public:
  OpenSession(std::atomic<int>* counter, int limit) : counter_(counter) {
    admitted_ = ++*counter_ <= limit;
  }
  ~OpenSession() { --*counter_; }
  OpenSession(const OpenSession&) = delete;
  OpenSession& operator=(const OpenSession&) = delete;
  bool admitted() const { return admitted_; }

 private:
  std::atomic<int>* counter_;
  bool admitted_ = false;
};

std::string metadata_value(const grpc::ServerContext& context, const char* key) {
  const auto& metadata = context.client_metadata();
  const auto it = metadata.find(key);
  return it == metadata.end() ? "" : std::string(it->second.data(), it->second.size());
}

// Refuses a client whose protocol or torch differs from the server's.
grpc::Status check_versions(const grpc::ServerContext& context) {
  const std::string protocol = metadata_value(context, kProtocolMetadataKey);
  const std::string torch = metadata_value(context, kTorchMetadataKey);
  if (protocol.empty() || torch.empty()) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        "the client did not send its protocol and torch versions (\"" +
                            std::string(kProtocolMetadataKey) + "\" and \"" + kTorchMetadataKey +
                            "\" metadata): it is older than this server (torch " + torch_version() +
                            "); install the same mycelya-torch release on both "
                            "sides");
  }
  const uint32_t protocol_version =
      protocol.find_first_not_of("0123456789") == std::string::npos && protocol.size() < 10
          ? static_cast<uint32_t>(std::stoul(protocol))
          : 0;
  if (const auto mismatch = version_mismatch(protocol_version, torch, "client")) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, *mismatch);
  }
  return grpc::Status::OK;
}

}  // namespace

MycelyaService::MycelyaService(ServiceOptions options) : options_(std::move(options)) {}

grpc::Status MycelyaService::authenticate(const grpc::ServerContext& context) const {
  if (options_.token.empty()) return grpc::Status::OK;
  const auto& metadata = context.client_metadata();
  const auto it = metadata.find("authorization");
  if (it == metadata.end()) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "this mycelya-server requires a token: send the metadata "
                        "\"authorization: Bearer <token>\"");
  }
  const std::string value(it->second.data(), it->second.size());
  if (!constant_time_equal(value, "Bearer " + options_.token)) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "the token in the \"authorization\" metadata is not this server's token "
                        "(expected \"Bearer <token>\")");
  }
  return grpc::Status::OK;
}

grpc::Status MycelyaService::check_client(const grpc::ServerContext& context,
                                          std::string* state_key) const {
  grpc::Status status = authenticate(context);
  if (status.ok()) status = check_versions(context);
  if (!status.ok()) return status;
  // The state key becomes part of a path: exactly 64 hex digits, or refused.
  *state_key = metadata_value(context, kStateKeyMetadataKey);
  if (!state_key->empty() && !valid_state_key(*state_key)) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        std::string("the \"") + kStateKeyMetadataKey +
                            "\" metadata must be 64 lowercase hex digits");
  }
  return grpc::Status::OK;
}

grpc::Status MycelyaService::refuse(const grpc::ServerContext& context, grpc::Status refusal) {
  // Every refusal is logged the same way, and ends the call with its status.
  log("refused a session from ", context.peer(), " (", refusal.error_message(), ")");
  return refusal;
}

bool MycelyaService::claim_state_key(const std::string& state_key) {
  if (state_key.empty()) return true;
  std::lock_guard<std::mutex> lock(sessions_mu_);
  return state_keys_.insert(state_key).second;
}

void MycelyaService::release_state_key(const std::string& state_key) {
  if (state_key.empty()) return;
  std::lock_guard<std::mutex> lock(sessions_mu_);
  state_keys_.erase(state_key);
}

ExecutorOptions MycelyaService::executor_options(const std::string& state_key) const {
  ExecutorOptions executor_options = options_.executor;
  if (!state_key.empty() && !options_.state_dir.empty()) {
    executor_options.state_dir = options_.state_dir + "/" + state_key;
  }
  return executor_options;
}

bool MycelyaService::send_hello(Stream* stream, const Executor& executor,
                                const std::string& session_key) const {
  wire::ServerMessage hello;
  hello.mutable_hello()->set_version(wire::PROTOCOL_VERSION_CURRENT);
  for (const std::string& name : executor.options().device_names) {
    hello.mutable_hello()->add_devices(name);
  }
  for (const wire::DeviceProperties& properties : executor.options().device_properties) {
    *hello.mutable_hello()->add_device_properties() = properties;
  }
  hello.mutable_hello()->set_session_key(session_key);
  hello.mutable_hello()->set_torch_version(torch_version());
  return stream->Write(hello, grpc::WriteOptions().clear_buffer_hint());
}

grpc::Status MycelyaService::serve_session(uint64_t id, grpc::ServerContext* context,
                                           Executor& executor, Stream* stream) {
  auto early_reads = std::make_shared<EarlyReads>(executor);
  // Unguessable: a session's key is all a Read needs besides the server's
  // token, which every client of the server shares.
  const std::string key = random_hex(32, "a session key");
  {
    std::lock_guard<std::mutex> lock(sessions_mu_);
    sessions_[key] = early_reads;
  }
  std::string failure;  // why the session failed, if it did
  // However the session ends (an exception included), reads stop reaching
  // the executor before it goes.
  const auto unregister = c10::make_scope_exit([&] {
    {
      std::lock_guard<std::mutex> lock(sessions_mu_);
      sessions_.erase(key);
    }
    early_reads->end("session " + std::to_string(id) + " ended" +
                     (failure.empty() ? "" : ": " + failure));
  });
  log("session ", id, " from ", context->peer(), " opened (", open_sessions_.load(), " open)");
  const grpc::Status status =
      send_hello(stream, executor, key)
          ? serve(executor, *early_reads, stream, working_, [this] { note_activity(); })
          : stream_broken();
  if (!status.ok()) failure = status.error_message();
  // A client that vanished (or a server stopping, --idle-timeout included)
  // cancels the session: its storages are saved for a resume, where the
  // server keeps state. A client that closed the session meant to end it.
  if (context->IsCancelled()) save_for_resume(id, executor, *early_reads);
  return status;
}

grpc::Status MycelyaService::Session(grpc::ServerContext* context, Stream* stream) {
  note_activity();
  std::string state_key;
  grpc::Status status = check_client(*context, &state_key);
  if (!status.ok()) return refuse(*context, status);
  const uint64_t id = next_session_id_++;
  {
    // Declared before the executor, so the count drops only once the
    // executor and its storages are gone.
    OpenSession counted(&open_sessions_, options_.max_sessions);
    if (!counted.admitted()) {
      return refuse(*context, grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                                           "this mycelya-server already serves " +
                                               std::to_string(options_.max_sessions) +
                                               " sessions, its limit (--max-sessions); stop a "
                                               "machine that uses it, or start another server"));
    }
    // One session per state key at a time: a resumed session must not
    // restore while the one before it still saves.
    if (!claim_state_key(state_key)) {
      return refuse(*context, grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                                           "another session of this machine (the same state key) "
                                           "is still open on this server; try again once it has "
                                           "ended"));
    }
    const auto release = c10::make_scope_exit([&] { release_state_key(state_key); });
    Executor executor(executor_options(state_key));
    status = serve_session(id, context, executor, stream);
  }
  // Read fails alike for a client that closed and one that vanished or was
  // cancelled (by a shutdown, say); the log tells them apart.
  const char* how = !status.ok()             ? ": "
                    : context->IsCancelled() ? " (cancelled or disconnected)"
                                             : " (closed by the client)";
  log("session ", id, " ended", how, status.error_message(), "; ", open_sessions_.load(), " open");
  return status;
}

grpc::Status MycelyaService::Health(grpc::ServerContext* context,
                                    const wire::HealthRequest* /*request*/,
                                    wire::HealthResponse* response) {
  grpc::Status status = authenticate(*context);
  if (!status.ok()) return status;
  response->set_serving(true);
  response->set_protocol_version(wire::PROTOCOL_VERSION_CURRENT);
  response->set_torch_version(torch_version());
  for (const std::string& name : options_.executor.device_names) response->add_devices(name);
  response->set_sessions(static_cast<uint32_t>(std::max(open_sessions_.load(), 0)));
  return grpc::Status::OK;
}

void MycelyaService::save_for_resume(uint64_t id, Executor& executor, EarlyReads& early_reads) {
  // Even with no storage: a manifest says that nothing was lost.
  if (executor.options().state_dir.empty()) return;
  early_reads.begin_executing();  // no Read may use the executor meanwhile
  const auto done = c10::make_scope_exit([&] { early_reads.end_executing(); });
  try {
    wire::StateReport report;
    executor.save_state(&report);
    log("session ", id, ": saved ", report.storage_ids_size(), " storages (", report.bytes(),
        " bytes) to the state folder for a resume");
  } catch (const std::exception& e) {
    log("session ", id, ": could not save its storages for a resume: ", e.what());
  }
}

size_t MycelyaService::reads_waiting() {
  std::vector<std::shared_ptr<EarlyReads>> sessions;
  {
    std::lock_guard<std::mutex> lock(sessions_mu_);
    for (const auto& entry : sessions_) sessions.push_back(entry.second);
  }
  size_t waiting = 0;
  for (const auto& session : sessions) waiting += session->waiting();
  return waiting;
}

grpc::Status MycelyaService::Read(grpc::ServerContext* context, const wire::ReadRequest* request,
                                  wire::ReadResponse* response) {
  note_activity();
  grpc::Status status = authenticate(*context);
  if (!status.ok()) return status;
  std::shared_ptr<EarlyReads> session;
  {
    std::lock_guard<std::mutex> lock(sessions_mu_);
    const auto it = sessions_.find(request->session_key());
    if (it != sessions_.end()) session = it->second;
  }
  if (!session) {
    return grpc::Status(grpc::StatusCode::NOT_FOUND,
                        "no open session has this key (the session ended, or the key is not "
                        "one this server gave out)");
  }
  return session->read(*request, response, context);
}

}  // namespace mycelya
