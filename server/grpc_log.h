// SPDX-License-Identifier: AGPL-3.0-or-later
//
// gRPC's own log messages, which it otherwise writes to stderr in a format
// of its own, several lines for one failure. Routed through the server's
// logger (server/log.h) as one line each, "mycelya-server: grpc: ..."; while
// the server starts they are collected instead, so that a failed start (a
// bad certificate, a socket path too long) is one error line that says why.
#pragma once

#include <string>

namespace mycelya {

// Installs the routing; call once, before gRPC is used.
void route_grpc_log();

// While one exists, gRPC's messages are kept rather than logged.
class GrpcLogCapture {
 public:
  GrpcLogCapture();
  ~GrpcLogCapture();
  GrpcLogCapture(const GrpcLogCapture&) = delete;
  GrpcLogCapture& operator=(const GrpcLogCapture&) = delete;

  // The messages kept so far, joined by "; " (empty: none).
  std::string text() const;
};

}  // namespace mycelya
