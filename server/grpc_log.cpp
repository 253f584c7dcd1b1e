// SPDX-License-Identifier: AGPL-3.0-or-later
#include "server/grpc_log.h"

#include <grpc/support/log.h>

#include <mutex>

#include "server/log.h"

namespace mycelya {
namespace {

std::mutex capture_mu;
// Where messages go while a GrpcLogCapture exists; null: to the log.
std::string* captured = nullptr;

void append(std::string* text, const char* message) {
  if (!text->empty()) *text += "; ";
  *text += message;
}

void on_grpc_message(gpr_log_func_args* args) {
  const char* message = args->message ? args->message : "";
  {
    std::lock_guard<std::mutex> lock(capture_mu);
    if (captured) {
      append(captured, message);
      return;
    }
  }
  log("grpc: ", message);
}

}  // namespace

void route_grpc_log() { gpr_set_log_function(&on_grpc_message); }

GrpcLogCapture::GrpcLogCapture() {
  std::lock_guard<std::mutex> lock(capture_mu);
  captured = new std::string();
}

GrpcLogCapture::~GrpcLogCapture() {
  std::lock_guard<std::mutex> lock(capture_mu);
  delete captured;
  captured = nullptr;
}

std::string GrpcLogCapture::text() const {
  std::lock_guard<std::mutex> lock(capture_mu);
  return captured ? *captured : "";
}

}  // namespace mycelya
