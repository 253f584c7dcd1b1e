// SPDX-License-Identifier: AGPL-3.0-or-later
//
// The gRPC channel settings mycelya-server and its clients share, defined
// once: message limits and flow control sized for bulk payloads, and the
// keepalive pings the client sends and the server must tolerate. Each side
// applies them through its own setter (grpc::ChannelArguments::SetInt on
// the client, grpc::ServerBuilder::AddChannelArgument on the server).
#pragma once

#include <grpc/grpc.h>

namespace mycelya {

// The largest message either way unless a server is started with another
// --max-message-bytes. Payloads travel in chunks far below it.
constexpr int kDefaultMaxMessageBytes = 64 << 20;

// The client pings an idle connection this often to find a dead peer (and
// to keep NAT mappings open); the server accepts pings this frequent, where
// gRPC would otherwise answer them with GOAWAY.
constexpr int kClientKeepaliveMs = 10 * 1000;

// Calls set(name, value) for every channel argument both sides use.
template <typename Set>
void apply_shared_channel_args(int max_message_bytes, const Set& set) {
  set(GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH, max_message_bytes);
  set(GRPC_ARG_MAX_SEND_MESSAGE_LENGTH, max_message_bytes);
  // Bulk payloads: a deep receive window and big HTTP/2 frames, so a
  // transfer is not throttled by flow-control round trips.
  set(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 64 << 20);
  set(GRPC_ARG_HTTP2_MAX_FRAME_SIZE, (16 << 20) - 1);
  // Pings on a connection with no call in flight are part of the contract.
  set(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
}

}  // namespace mycelya
