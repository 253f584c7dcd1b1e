// SPDX-License-Identifier: AGPL-3.0-or-later
//
// The client side of mycelya-server's Session stream, shared by every
// networked provider. A batch goes out at once unless the session's limit of
// batches are in flight (sent, not yet run: kMaxBatchesInFlight, or
// kMaxBatchesInFlightSlowLink on a slow link); then core's sender waits in
// wait_until_ready() before gathering, so the ops queued meanwhile coalesce
// into one batch: low latency for single ops, few large batches under a flood.
// A request waits for its response, which the reader thread hands over. Bulk
// payloads travel as chunks after their message. A small download whose
// source no later command mentions goes beside the stream (the Read RPC),
// answered as soon as the server has run the last command before it.
//
// When the connection drops or the server dies, every pending and later call
// raises std::runtime_error: never a hang.
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "core/provider.h"
#include "proto/mycelya.grpc.pb.h"
#include "proto/transport_tuning.h"

namespace mycelya {

struct GrpcTarget {
  std::string address;  // "host:port" or "unix:/path"
  std::string token;    // sent as "authorization: Bearer <token>"
  int max_message_bytes = kDefaultMaxMessageBytes;
  // TLS: the server must present a certificate that these PEM roots (a CA,
  // or the server's own certificate, pinned) vouch for; with tls and no
  // roots, the system's. Without tls, plaintext.
  bool tls = false;
  std::string tls_root_certs_pem;
  // The name the certificate must carry, where it is not the address's host
  // (a pinned certificate made for a name, reached by IP).
  std::string tls_server_name;
  // Names the session's paused state on a server with --state-dir
  // (MachineSpec::state_key); empty: the session cannot pause.
  std::string state_key;
};

std::shared_ptr<grpc::Channel> make_channel(const GrpcTarget& target);

// Two, not one: the server then finds the next batch already sent when it
// finishes one, instead of idling for a round trip (an acknowledgement back,
// the next batch out) between them. A training step of a small MLP ran about
// 6% faster on local-cuda; three measured the same as two. The cost: a flood
// of tiny ops goes out in more, smaller batches (about a quarter fewer ops/s).
constexpr int kMaxBatchesInFlight = 2;
// On a slow link waiting for a free slot costs a round trip, so a step ending
// in loss.item() would pay two, and a loop without a sync point would run at
// two batches per round trip. Where the handshake took longer than
// kSlowLinkRoundTrip (one sample, which also counts the server's session
// set-up: a loaded host may cross it on loopback, costing only coalescing),
// batches go out as they come, up to this many.
constexpr int kMaxBatchesInFlightSlowLink = 256;
constexpr std::chrono::microseconds kSlowLinkRoundTrip{5000};

class GrpcSession final : public Session {
 public:
  // Connects and opens the stream; throws std::runtime_error when the server
  // cannot be reached in `connect_timeout` or refuses the session.
  GrpcSession(const GrpcTarget& target, std::chrono::milliseconds connect_timeout);
  ~GrpcSession() override;

  std::vector<std::string> devices() const override { return devices_; }
  std::vector<std::string> device_properties() const override { return device_properties_; }
  void submit(EncodedBatch& batch) override;
  void wait_until_ready() override { wait_for_free_slot(); }
  std::string request(const std::string& request, std::string* payload) override;
  bool read_after(const std::string& request, uint64_t after_command, std::string* response,
                  std::string* payload) override;
  void stop() override;
  // With a state key, the server (started with --state-dir) keeps what core
  // saved before pause(), which only ends the session; a new session with the
  // same key restores it.
  bool can_pause() const override { return can_pause_; }
  void pause() override { stop(); }

 private:
  void reader_loop();
  // Waits until fewer than max_in_flight_ batches are in flight (or the stream ended).
  void wait_for_free_slot();
  // Writes one message; throws once the stream is broken. Caller holds write_mu_.
  void send_write_locked(const wire::ClientMessage& message);
  void send_payload_write_locked(const std::string& payload);
  [[noreturn]] void throw_lost();
  [[noreturn]] void throw_lost_state_locked();  // caller holds state_mu_

  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<wire::Mycelya::Stub> stub_;
  // The stream's call; it holds the connection open until destroyed (stop()).
  std::unique_ptr<grpc::ClientContext> context_ = std::make_unique<grpc::ClientContext>();
  std::unique_ptr<grpc::ClientReaderWriter<wire::ClientMessage, wire::ServerMessage>> stream_;
  std::vector<std::string> devices_;
  std::vector<std::string> device_properties_;  // encoded, from the Hello
  std::string token_;
  std::string session_key_;  // empty: the server has no Read
  bool can_pause_ = false;
  int max_in_flight_ = kMaxBatchesInFlight;  // kMaxBatchesInFlightSlowLink on a slow link

  // Two locks: write_mu_ orders writes to the stream, state_mu_ guards the
  // hand-over below. Methods named *_write_locked need write_mu_ held,
  // *_state_locked state_mu_.
  std::mutex write_mu_;
  bool writes_done_ = false;

  // Hand-over from the reader thread; core keeps at most one request in flight.
  std::mutex state_mu_;
  std::condition_variable cv_;
  std::optional<std::string> response_;
  std::string response_payload_;
  // The buffer the requester passed for the payload (possibly with capacity).
  std::string receive_buffer_;
  std::string lost_;  // why the stream ended, once it has
  int batches_in_flight_ = 0;
  bool reader_done_ = false;
  bool stopped_ = false;
  std::vector<grpc::ClientContext*> reads_;  // Read calls in flight
  std::thread reader_;
};

// A machine whose transport is a GrpcSession and whose lifecycle is the
// provider's own (a child process, a pod, a sandbox): the transport calls
// go to grpc_; the subclass ends the machine in stop() and pause().
class GrpcBackedSession : public Session {
 public:
  std::vector<std::string> devices() const override { return grpc_->devices(); }
  std::vector<std::string> device_properties() const override { return grpc_->device_properties(); }
  void submit(EncodedBatch& batch) override { grpc_->submit(batch); }
  void wait_until_ready() override { grpc_->wait_until_ready(); }
  std::string request(const std::string& request, std::string* payload) override {
    return grpc_->request(request, payload);
  }
  bool read_after(const std::string& request, uint64_t after_command, std::string* response,
                  std::string* payload) override {
    return grpc_->read_after(request, after_command, response, payload);
  }

 protected:
  explicit GrpcBackedSession(std::unique_ptr<GrpcSession> grpc = nullptr)
      : grpc_(std::move(grpc)) {}

  std::unique_ptr<GrpcSession> grpc_;
};

}  // namespace mycelya
