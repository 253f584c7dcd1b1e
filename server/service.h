// SPDX-License-Identifier: AGPL-3.0-or-later
//
// The gRPC face of the executor (mycelya-server). Each Session stream gets an
// Executor of its own, so clients never share storage IDs, and the executor
// (with every storage it holds) is freed as soon as the stream ends, however
// it ends: the client closing, the network failing, or the server shutting
// down.
//
// Session protocol, in stream order (see the last section of mycelya.proto):
//   server: ServerMessage{hello}
//   client: ClientMessage{batch, payload_count=N}, then N payloads, each as
//           consecutive ClientMessage{chunk} ending with chunk.last == true
//   server: ServerMessage{batch_done} once that batch has run
//   client: ClientMessage{request}
//   server: ServerMessage{response, has_payload}, then, when has_payload, one
//           payload as ServerMessage{chunk}s of at most kPayloadChunkBytes, the last
//           one with last == true
// Anything else ends the session with INVALID_ARGUMENT. Small downloads may
// also come beside the stream, through the Read RPC (server/early_reads.h).
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <unordered_set>

#include "proto/mycelya.grpc.pb.h"
#include "proto/mycelya.pb.h"
#include "proto/payload_chunks.h"
#include "server/early_reads.h"
#include "server/executor.h"

namespace mycelya {

struct ServiceOptions {
  // Clients must send "authorization: Bearer <token>". Empty: no check at all,
  // which main() only allows on loopback and unix-socket addresses.
  std::string token;
  // Copied into every session's Executor: the devices, the session's memory
  // limit and the server's budget (shared by all sessions).
  ExecutorOptions executor;
  // Sessions open at once; more are refused with RESOURCE_EXHAUSTED.
  int max_sessions = 64;
  // --state-dir: a session's state folder is <state_dir>/<its state key>;
  // empty: sessions cannot pause.
  std::string state_dir;
};

class MycelyaService final : public wire::Mycelya::Service {
 public:
  explicit MycelyaService(ServiceOptions options);

  grpc::Status Session(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<wire::ServerMessage, wire::ClientMessage>* stream) override;

  grpc::Status Health(grpc::ServerContext* context, const wire::HealthRequest* request,
                      wire::HealthResponse* response) override;

  // A download of the session named by request->session_key(), answered
  // once that session has run request->after_command() commands.
  grpc::Status Read(grpc::ServerContext* context, const wire::ReadRequest* request,
                    wire::ReadResponse* response) override;

  // Sessions that passed authentication and have not ended yet.
  int open_sessions() const { return open_sessions_.load(); }
  // Reads of all sessions waiting for their command (for tests).
  size_t reads_waiting();
  // When a client last did anything (any message or call), for --idle-timeout:
  // now while a session runs a batch or request (a remote function may train
  // for hours without a message).
  std::chrono::steady_clock::time_point last_activity() const {
    if (working_.load() > 0) return std::chrono::steady_clock::now();
    return std::chrono::steady_clock::time_point(
        std::chrono::steady_clock::duration(last_activity_.load()));
  }

 private:
  using Stream = grpc::ServerReaderWriter<wire::ServerMessage, wire::ClientMessage>;

  // The steps of Session, in order.
  // Authentication, the client's versions, and its state key (checked, or
  // empty): whether the client may open a session at all.
  grpc::Status check_client(const grpc::ServerContext& context, std::string* state_key) const;
  grpc::Status authenticate(const grpc::ServerContext& context) const;
  // Logs a refused session; returns `refusal`.
  static grpc::Status refuse(const grpc::ServerContext& context, grpc::Status refusal);
  // One open session per state key; false when another holds it. An empty
  // key is always free.
  bool claim_state_key(const std::string& state_key);
  void release_state_key(const std::string& state_key);
  // The server's executor options, with the session's state folder.
  ExecutorOptions executor_options(const std::string& state_key) const;
  // Registers the session's key for Read, says hello, serves the stream to
  // its end, and saves a cancelled session for a resume.
  grpc::Status serve_session(uint64_t id, grpc::ServerContext* context, Executor& executor,
                             Stream* stream);
  bool send_hello(Stream* stream, const Executor& executor, const std::string& session_key) const;
  // Saves a session that ended without its client closing it, where the
  // server keeps state (--state-dir).
  static void save_for_resume(uint64_t id, Executor& executor, EarlyReads& early_reads);
  void note_activity() {
    last_activity_ = std::chrono::steady_clock::now().time_since_epoch().count();
  }

  const ServiceOptions options_;
  std::atomic<int> open_sessions_{0};
  std::atomic<uint64_t> next_session_id_{1};  // tells sessions apart in the log
  std::atomic<int> working_{0};               // sessions running a batch or request now
  std::atomic<std::chrono::steady_clock::rep> last_activity_{
      std::chrono::steady_clock::now().time_since_epoch().count()};

  // Open sessions by their key (Hello.session_key), for Read.
  std::mutex sessions_mu_;
  std::unordered_map<std::string, std::shared_ptr<EarlyReads>> sessions_;
  // State keys of the open sessions (x-mycelya-state-key), one session each.
  std::unordered_set<std::string> state_keys_;
};

}  // namespace mycelya
