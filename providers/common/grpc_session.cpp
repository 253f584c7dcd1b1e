// SPDX-License-Identifier: AGPL-3.0-or-later
#include "providers/common/grpc_session.h"

#include <algorithm>
#include <stdexcept>

#include "proto/handshake.h"
#include "proto/payload_chunks.h"
#include "proto/transport_tuning.h"

namespace mycelya {
namespace {

void authorize(grpc::ClientContext* context, const std::string& token) {
  if (!token.empty()) context->AddMetadata("authorization", "Bearer " + token);
}

std::string status_text(const grpc::Status& status) {
  switch (status.error_code()) {
    case grpc::StatusCode::UNAUTHENTICATED:
      return "the server refused the session (wrong or missing token): " + status.error_message();
    case grpc::StatusCode::UNAVAILABLE:
      return "the server is unreachable (did it exit?): " + status.error_message();
    case grpc::StatusCode::FAILED_PRECONDITION:
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return "the server refused the session: " + status.error_message();
    case grpc::StatusCode::OK:
      return "the server closed the session";
    default:
      return "the session failed: " + status.error_message();
  }
}

}  // namespace

std::shared_ptr<grpc::Channel> make_channel(const GrpcTarget& target) {
  grpc::ChannelArguments args;
  apply_shared_channel_args(target.max_message_bytes,
                            [&args](const char* name, int value) { args.SetInt(name, value); });
  // Detect a dead peer on an idle connection instead of waiting forever.
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, kClientKeepaliveMs);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10 * 1000);
  // A server that is not up yet is tried again soon, not after gRPC's
  // default one-second backoff.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 20);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 20);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  if (!target.tls) {
    return grpc::CreateCustomChannel(target.address, grpc::InsecureChannelCredentials(), args);
  }
  grpc::SslCredentialsOptions tls;
  tls.pem_root_certs = target.tls_root_certs_pem;
  if (!target.tls_server_name.empty()) {
    args.SetString(GRPC_SSL_TARGET_NAME_OVERRIDE_ARG, target.tls_server_name);
  }
  return grpc::CreateCustomChannel(target.address, grpc::SslCredentials(tls), args);
}

GrpcSession::GrpcSession(const GrpcTarget& target, std::chrono::milliseconds connect_timeout)
    : channel_(make_channel(target)),
      stub_(wire::Mycelya::NewStub(channel_)),
      token_(target.token),
      can_pause_(!target.state_key.empty()) {
  if (!channel_->WaitForConnected(std::chrono::system_clock::now() + connect_timeout)) {
    // A TLS failure (a wrong certificate, a plaintext server) also ends up
    // here: the channel never becomes ready.
    throw std::runtime_error(
        "could not connect to mycelya-server at " + target.address +
        (target.tls ? " over TLS (is it up, does it speak TLS, and does its certificate match "
                      "the CA or pinned certificate given?)"
                    : " (is it up, and does it expect plaintext rather than TLS?)"));
  }
  authorize(context_.get(), target.token);
  context_->AddMetadata(kProtocolMetadataKey, std::to_string(wire::PROTOCOL_VERSION_CURRENT));
  context_->AddMetadata(kTorchMetadataKey, torch_version());
  if (!target.state_key.empty()) context_->AddMetadata(kStateKeyMetadataKey, target.state_key);
  const auto opened = std::chrono::steady_clock::now();
  stream_ = stub_->Session(context_.get());
  wire::ServerMessage hello;
  if (!stream_->Read(&hello) || !hello.has_hello()) {
    throw std::runtime_error(status_text(stream_->Finish()));
  }
  // The hello came back one round trip (and a session's set-up) after the
  // stream opened on a connected channel.
  if (std::chrono::steady_clock::now() - opened > kSlowLinkRoundTrip) {
    max_in_flight_ = kMaxBatchesInFlightSlowLink;
  }
  if (const auto mismatch =
          version_mismatch(hello.hello().version(), hello.hello().torch_version(), "server")) {
    throw std::runtime_error(*mismatch);
  }
  devices_.assign(hello.hello().devices().begin(), hello.hello().devices().end());
  for (const wire::DeviceProperties& properties : hello.hello().device_properties()) {
    device_properties_.push_back(properties.SerializeAsString());
  }
  session_key_ = hello.hello().session_key();
  reader_ = std::thread([this] { reader_loop(); });
}

GrpcSession::~GrpcSession() { stop(); }

void GrpcSession::reader_loop() {
  wire::ServerMessage message;
  std::string error;
  while (stream_->Read(&message)) {
    if (message.has_batch_done()) {
      std::lock_guard<std::mutex> lock(state_mu_);
      --batches_in_flight_;
      cv_.notify_all();
      continue;
    }
    if (!message.has_response()) {
      error = "the server sent a payload chunk without a response";
      context_->TryCancel();
      break;
    }
    std::string response = std::move(*message.mutable_response());
    std::string payload;
    {
      // The requester's buffer: its memory is reused, not freshly faulted in.
      std::lock_guard<std::mutex> lock(state_mu_);
      payload.swap(receive_buffer_);
    }
    payload.clear();
    bool complete = !message.has_payload();
    while (!complete && stream_->Read(&message) && message.has_chunk()) {
      complete = append_payload_chunk(message.mutable_chunk(), &payload);
    }
    if (!complete) break;
    std::lock_guard<std::mutex> lock(state_mu_);
    response_ = std::move(response);
    response_payload_ = std::move(payload);
    cv_.notify_all();
  }
  if (error.empty()) error = status_text(stream_->Finish());
  std::lock_guard<std::mutex> lock(state_mu_);
  lost_ = error;
  reader_done_ = true;
  cv_.notify_all();
}

void GrpcSession::throw_lost() {
  std::lock_guard<std::mutex> lock(state_mu_);
  throw_lost_state_locked();
}

void GrpcSession::throw_lost_state_locked() {
  throw std::runtime_error(lost_.empty() ? "the connection to the server broke" : lost_);
}

void GrpcSession::send_write_locked(const wire::ClientMessage& message) {
  if (writes_done_ || !stream_->Write(message)) throw_lost();
}

void GrpcSession::send_payload_write_locked(const std::string& payload) {
  write_payload_chunks<wire::ClientMessage>(payload.data(), payload.size(),
                                            [this](const wire::ClientMessage& message) {
                                              send_write_locked(message);
                                              return true;
                                            });
}

void GrpcSession::wait_for_free_slot() {
  std::unique_lock<std::mutex> lock(state_mu_);
  cv_.wait(lock, [this] { return batches_in_flight_ < max_in_flight_ || reader_done_; });
}

void GrpcSession::submit(EncodedBatch& batch) {
  wait_for_free_slot();
  {
    std::lock_guard<std::mutex> lock(state_mu_);
    ++batches_in_flight_;
  }
  std::lock_guard<std::mutex> lock(write_mu_);
  wire::ClientMessage message;
  message.set_batch(std::move(batch.batch));
  message.set_payload_count(static_cast<uint32_t>(batch.payloads.size()));
  send_write_locked(message);
  for (const auto& payload : batch.payloads) send_payload_write_locked(payload);
}

std::string GrpcSession::request(const std::string& request, std::string* payload) {
  if (payload) {
    std::lock_guard<std::mutex> lock(state_mu_);
    receive_buffer_.swap(*payload);
  }
  {
    std::lock_guard<std::mutex> lock(write_mu_);
    wire::ClientMessage message;
    message.set_request(request);
    send_write_locked(message);
  }
  std::unique_lock<std::mutex> lock(state_mu_);
  cv_.wait(lock, [this] { return response_.has_value() || reader_done_; });
  if (!response_) throw_lost_state_locked();
  std::string response = std::move(*response_);
  response_.reset();
  if (payload) *payload = std::move(response_payload_);
  response_payload_.clear();
  return response;
}

bool GrpcSession::read_after(const std::string& request, uint64_t after_command,
                             std::string* response, std::string* payload) {
  if (session_key_.empty()) return false;
  wire::ReadRequest read;
  read.set_session_key(session_key_);
  read.set_after_command(after_command);
  read.set_request(request);
  wire::ReadResponse answer;
  grpc::ClientContext context;
  authorize(&context, token_);
  grpc::Status status;
  {
    // Listed while the call runs, for stop() to cancel.
    struct Listed {
      GrpcSession* session;
      grpc::ClientContext* context;
      ~Listed() {
        std::lock_guard<std::mutex> lock(session->state_mu_);
        auto& reads = session->reads_;
        reads.erase(std::find(reads.begin(), reads.end(), context));
        session->cv_.notify_all();  // stop() waits for the last one
      }
    };
    {
      std::lock_guard<std::mutex> lock(state_mu_);
      if (reader_done_ || stopped_) throw_lost_state_locked();
      reads_.push_back(&context);
    }
    Listed listed{this, &context};
    status = stub_->Read(&context, read, &answer);
  }
  std::unique_lock<std::mutex> lock(state_mu_);
  if (status.ok()) {
    response->swap(*answer.mutable_response());
    if (payload) payload->swap(*answer.mutable_payload());
    return true;
  }
  // The server lost count of the session's commands (a batch it could not
  // decode): reads go in order from now on.
  if (status.error_code() == grpc::StatusCode::FAILED_PRECONDITION) return false;
  // A failed Read usually means the session failed too; its stream says why.
  cv_.wait_for(lock, std::chrono::seconds(2), [this] { return reader_done_; });
  if (reader_done_ || stopped_) throw_lost_state_locked();
  // The stream lives on: read in order from now on rather than lose the machine.
  return false;
}

void GrpcSession::stop() {
  {
    std::lock_guard<std::mutex> lock(write_mu_);
    if (!writes_done_ && stream_) stream_->WritesDone();
    writes_done_ = true;
  }
  {
    std::lock_guard<std::mutex> lock(state_mu_);
    stopped_ = true;  // no new reads
  }
  if (!reader_.joinable()) return;
  {
    // The server ends the stream once it has read everything; don't wait long
    // for one that is stuck.
    std::unique_lock<std::mutex> lock(state_mu_);
    if (!cv_.wait_for(lock, std::chrono::seconds(5), [this] { return reader_done_; })) {
      context_->TryCancel();
    }
    // The server answers reads as the session's last batches run, or fails
    // them as the session ends; one that does neither must not hold stop().
    for (grpc::ClientContext* read : reads_) read->TryCancel();
  }
  reader_.join();
  {
    std::unique_lock<std::mutex> lock(state_mu_);
    cv_.wait(lock, [this] { return reads_.empty(); });
  }
  // Closes the connection now: a server shutting down waits (its grace
  // period) for clients that still hold one, even an idle one.
  stream_.reset();
  context_.reset();
  stub_.reset();
  channel_.reset();
}

}  // namespace mycelya
