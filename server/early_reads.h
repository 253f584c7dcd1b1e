// SPDX-License-Identifier: AGPL-3.0-or-later
//
// Downloads served out of stream order: the Read RPC (see wire::ReadRequest).
//
// A session's executor belongs to the thread that serves its stream; a Read
// arrives on another gRPC thread. EarlyReads hands the read over: while the
// session thread runs a batch, it serves each waiting read between two
// commands, as soon as it has run the command the read waits for. While the
// session thread waits for its next message, the Read's own thread serves
// the read, holding the lock that keeps the session thread from starting a
// batch meanwhile.
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "proto/mycelya.pb.h"
#include "server/executor.h"

namespace mycelya {

class EarlyReads {
 public:
  // Installs itself as the executor's after-command hook until end().
  explicit EarlyReads(Executor& executor);
  EarlyReads(const EarlyReads&) = delete;
  EarlyReads& operator=(const EarlyReads&) = delete;

  // The session thread, around every use of the executor.
  void begin_executing();
  void end_executing();

  // The session is over: waiting and later reads fail with UNAVAILABLE and
  // `why`. Must come before the executor is destroyed; after it, nothing
  // here touches the executor.
  void end(const std::string& why);

  // A Read's thread: blocks until the read is served, the session ends or
  // the caller cancels.
  grpc::Status read(const wire::ReadRequest& request, wire::ReadResponse* response,
                    grpc::ServerContext* context);

  // Reads waiting for their command (for tests).
  size_t waiting();

 private:
  struct Waiting {
    uint64_t after_command = 0;
    const std::string* request = nullptr;
    wire::ReadResponse* response = nullptr;
    bool done = false;
    bool refused = false;  // done, but the session can no longer place reads
  };

  void after_command();
  // Serves every waiting read whose command has run. Caller holds mu_.
  void serve_ready_locked();
  void serve_locked(Waiting* read);
  static grpc::Status answered(const Waiting& read);

  Executor& executor_;
  std::mutex mu_;
  std::condition_variable served_;
  // Lets the session thread skip the lock after each command when nobody waits.
  std::atomic<bool> anyone_waiting_{false};
  std::vector<Waiting*> waiting_;
  bool executing_ = false;
  std::string ended_;  // why the session ended, once it has
};

}  // namespace mycelya
