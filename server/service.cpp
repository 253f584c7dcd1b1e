// SPDX-License-Identifier: AGPL-3.0-or-later
#include "server/service.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <algorithm>
#include <iostream>
#include <mutex>
#include <sstream>
#include <utility>
#include <vector>

namespace mycelya {
namespace {

using Stream = grpc::ServerReaderWriter<wire::ServerMessage, wire::ClientMessage>;

// Sessions log from many gRPC threads; one lock keeps their lines whole.
template <typename... Parts>
void log(const Parts&... parts) {
  static std::mutex mu;
  std::ostringstream line;
  line << "mycelya-server: ";
  (line << ... << parts);
  line << '\n';
  std::lock_guard<std::mutex> lock(mu);
  std::cerr << line.str() << std::flush;
}

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

// Reads payload `index` (of `count`) of a batch: chunks up to the one marked last.
grpc::Status read_payload(Stream* stream, uint32_t index, uint32_t count, std::string* payload) {
  wire::ClientMessage message;
  const std::string which =
      "payload " + std::to_string(index + 1) + " of " + std::to_string(count) + " of a batch";
  while (true) {
    if (!stream->Read(&message)) return violation("the stream ended inside " + which);
    if (!message.has_chunk()) {
      return violation(std::string("expected a chunk of ") + which + ", got " + kind_name(message));
    }
    if (message.payload_count() != 0) return violation("payload_count is only valid with a batch");
    wire::PayloadChunk* chunk = message.mutable_chunk();
    // A single-chunk payload (the common case) is taken over, not copied.
    if (payload->empty()) {
      payload->swap(*chunk->mutable_data());
    } else {
      payload->append(chunk->data());
    }
    if (chunk->last()) return grpc::Status::OK;
  }
}

// Sends a response payload as chunks of at most kChunkBytes; an empty payload
// is still one chunk, so the client always waits for exactly one `last`.
bool write_payload(Stream* stream, const std::string& payload) {
  wire::ServerMessage message;
  size_t offset = 0;
  do {
    const size_t n = std::min(kChunkBytes, payload.size() - offset);
    wire::PayloadChunk* chunk = message.mutable_chunk();
    chunk->mutable_data()->assign(payload, offset, n);
    offset += n;
    chunk->set_last(offset == payload.size());
    if (!stream->Write(message)) return false;
  } while (offset < payload.size());
  return true;
}

// The message loop of one session, after the hello.
grpc::Status serve(Executor& executor, Stream* stream) {
  wire::ClientMessage message;
  std::vector<std::string> payloads;
  while (stream->Read(&message)) {
    switch (message.kind_case()) {
      case wire::ClientMessage::kBatch: {
        const std::string batch = std::move(*message.mutable_batch());
        const uint32_t count = message.payload_count();
        // Not reserved up front: the count comes from the client, the
        // payloads it promises may never arrive.
        payloads.clear();
        for (uint32_t i = 0; i < count; ++i) {
          std::string payload;
          grpc::Status status = read_payload(stream, i, count, &payload);
          if (!status.ok()) return status;
          payloads.push_back(std::move(payload));
        }
        executor.run_batch(batch, payloads);
        // Uploads can be large; do not hold them until the next batch.
        payloads.clear();
        payloads.shrink_to_fit();
        break;
      }
      case wire::ClientMessage::kRequest: {
        if (message.payload_count() != 0) {
          return violation("payload_count is only valid with a batch");
        }
        // The executor decodes the request too; this copy only tells whether a
        // payload follows, which a failed download must also send (empty).
        wire::Request request;
        const bool download = request.ParseFromString(message.request()) && request.has_download();
        std::string payload;
        wire::ServerMessage reply;
        reply.set_response(executor.handle_request(message.request(), &payload));
        reply.set_has_payload(download);
        // The client is blocked on this answer: send it now, not when gRPC
        // would find it convenient to.
        if (!stream->Write(reply, grpc::WriteOptions().clear_buffer_hint())) {
          return stream_broken();
        }
        if (download && !write_payload(stream, payload)) return stream_broken();
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

// Counts a session for Health while it lives.
class OpenSession {
 public:
  explicit OpenSession(std::atomic<int>* counter) : counter_(counter) { ++*counter_; }
  ~OpenSession() { --*counter_; }
  OpenSession(const OpenSession&) = delete;
  OpenSession& operator=(const OpenSession&) = delete;

 private:
  std::atomic<int>* counter_;
};

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

grpc::Status MycelyaService::Session(grpc::ServerContext* context, Stream* stream) {
  grpc::Status status = authenticate(*context);
  if (!status.ok()) {
    log("refused a session from ", context->peer(), " (", status.error_message(), ")");
    return status;
  }
  const uint64_t id = next_session_id_++;
  {
    // Declared before the executor, so the count drops only once the
    // executor and its storages are gone.
    OpenSession counted(&open_sessions_);
    Executor executor(options_.executor);
    log("session ", id, " from ", context->peer(), " opened (", open_sessions_.load(), " open)");

    wire::ServerMessage hello;
    hello.mutable_hello()->set_version(wire::PROTOCOL_VERSION_CURRENT);
    for (const std::string& name : options_.executor.device_names) {
      hello.mutable_hello()->add_devices(name);
    }
    status = stream->Write(hello, grpc::WriteOptions().clear_buffer_hint())
                 ? serve(executor, stream)
                 : stream_broken();
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
  for (const std::string& name : options_.executor.device_names) response->add_devices(name);
  response->set_sessions(static_cast<uint32_t>(std::max(open_sessions_.load(), 0)));
  return grpc::Status::OK;
}

bool is_local_address(const std::string& address) {
  if (address.rfind("unix:", 0) == 0 || address.rfind("unix-abstract:", 0) == 0) return true;
  // HOST:PORT, where an IPv6 HOST is bracketed ([::1]:50051).
  std::string host = address;
  const size_t colon = address.rfind(':');
  const size_t bracket = address.rfind(']');
  if (colon != std::string::npos && (bracket == std::string::npos || colon > bracket)) {
    host = address.substr(0, colon);
  }
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  if (host == "localhost") return true;
  in_addr v4;
  if (inet_pton(AF_INET, host.c_str(), &v4) == 1) {
    return (ntohl(v4.s_addr) >> 24) == 127;
  }
  in6_addr v6;
  if (inet_pton(AF_INET6, host.c_str(), &v6) == 1) return IN6_IS_ADDR_LOOPBACK(&v6);
  return false;
}

}  // namespace mycelya
