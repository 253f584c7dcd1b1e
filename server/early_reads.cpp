// SPDX-License-Identifier: AGPL-3.0-or-later
#include "server/early_reads.h"

#include <algorithm>
#include <chrono>

namespace mycelya {

EarlyReads::EarlyReads(Executor& executor) : executor_(executor) {
  executor_.set_after_command([this] { after_command(); });
}

void EarlyReads::begin_executing() {
  std::lock_guard<std::mutex> lock(mu_);
  executing_ = true;
}

void EarlyReads::end_executing() {
  std::lock_guard<std::mutex> lock(mu_);
  serve_ready_locked();
  executing_ = false;
}

void EarlyReads::after_command() {
  // A read registered just after this check is served after the next
  // command, or at end_executing().
  if (!anyone_waiting_.load(std::memory_order_relaxed)) return;
  std::lock_guard<std::mutex> lock(mu_);
  serve_ready_locked();
}

void EarlyReads::end(const std::string& why) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!ended_.empty()) return;
  ended_ = why.empty() ? "the session ended" : why;
  executor_.set_after_command(nullptr);
  served_.notify_all();
}

void EarlyReads::serve_locked(Waiting* read) {
  read->done = true;
  if (!executor_.commands_counted()) {
    // After a batch that could not be decoded no command number means
    // anything: the client reads in order from then on.
    read->refused = true;
    return;
  }
  try {
    Payload payload;
    read->response->set_response(executor_.handle_request(*read->request, &payload));
    // Copied while no later command can run: the bytes are this point's.
    read->response->set_payload(payload.data(), payload.size());
  } catch (const std::exception& e) {
    // handle_request reports failures in its response; this is memory
    // running out around it. The session thread serving it must go on.
    wire::Response response;
    response.mutable_error()->set_message(std::string("the read failed: ") + e.what());
    read->response->Clear();
    response.SerializeToString(read->response->mutable_response());
  }
}

void EarlyReads::serve_ready_locked() {
  if (waiting_.empty()) return;
  const uint64_t run = executor_.commands_run();
  const bool counted = executor_.commands_counted();
  bool served = false;
  for (Waiting* read : waiting_) {
    if (read->after_command <= run || !counted) {
      serve_locked(read);
      served = true;
    }
  }
  if (!served) return;
  waiting_.erase(std::remove_if(waiting_.begin(), waiting_.end(),
                                [](const Waiting* read) { return read->done; }),
                 waiting_.end());
  anyone_waiting_.store(!waiting_.empty(), std::memory_order_relaxed);
  served_.notify_all();
}

grpc::Status EarlyReads::answered(const Waiting& read) {
  if (!read.refused) return grpc::Status::OK;
  return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                      "the session received a batch it could not decode, so it cannot tell "
                      "where to answer a read: send downloads on the stream");
}

size_t EarlyReads::waiting() {
  std::lock_guard<std::mutex> lock(mu_);
  return waiting_.size();
}

grpc::Status EarlyReads::read(const wire::ReadRequest& request, wire::ReadResponse* response,
                              grpc::ServerContext* context) {
  wire::Request parsed;
  if (!parsed.ParseFromString(request.request()) || !parsed.has_download()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "Read answers downloads only; send other requests on the session's stream");
  }
  Waiting read;
  read.after_command = request.after_command();
  read.request = &request.request();
  read.response = response;
  std::unique_lock<std::mutex> lock(mu_);
  if (ended_.empty() && !executing_ &&
      (executor_.commands_run() >= read.after_command || !executor_.commands_counted())) {
    serve_locked(&read);
    return answered(read);
  }
  waiting_.push_back(&read);
  anyone_waiting_.store(true, std::memory_order_relaxed);
  // Waking now and then notices a client that gave up (the context is
  // cancelled without a word to this thread).
  while (!read.done && ended_.empty() && !context->IsCancelled()) {
    served_.wait_for(lock, std::chrono::milliseconds(200));
  }
  if (read.done) return answered(read);
  waiting_.erase(std::remove(waiting_.begin(), waiting_.end(), &read), waiting_.end());
  anyone_waiting_.store(!waiting_.empty(), std::memory_order_relaxed);
  if (!ended_.empty()) return grpc::Status(grpc::StatusCode::UNAVAILABLE, ended_);
  return grpc::Status(grpc::StatusCode::CANCELLED, "the client cancelled the read");
}

}  // namespace mycelya
