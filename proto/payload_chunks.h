// SPDX-License-Identifier: AGPL-3.0-or-later
//
// Bulk payloads on the Session stream, both directions: a payload travels as
// PayloadChunk messages of at most kPayloadChunkBytes (gRPC's default message
// limit is 4 MiB), the first saying the total size so the receiver allocates
// once, the last marked `last`. An empty payload is one empty, last chunk.
#pragma once

#include <algorithm>
#include <cstddef>
#include <string>

#include "proto/mycelya.pb.h"

namespace mycelya {

constexpr size_t kPayloadChunkBytes = 3 << 20;

// Sends `payload` through `write` (bool(const Message&)), each chunk in a
// Message's `chunk` field. Returns false as soon as a write fails.
template <typename Message, typename Write>
bool write_payload_chunks(const char* data, size_t size, Write write) {
  Message message;
  wire::PayloadChunk* chunk = message.mutable_chunk();
  chunk->set_total_bytes(size);
  size_t offset = 0;
  do {
    const size_t n = std::min(kPayloadChunkBytes, size - offset);
    chunk->mutable_data()->assign(data + offset, n);
    offset += n;
    chunk->set_last(offset == size);
    if (!write(message)) return false;
    chunk->clear_total_bytes();
  } while (offset < size);
  return true;
}

// Adds a received chunk to `payload`; returns whether it was the last one.
inline bool append_payload_chunk(wire::PayloadChunk* chunk, std::string* payload) {
  if (payload->empty()) {
    if (chunk->last()) {
      payload->swap(*chunk->mutable_data());  // a one-chunk payload is taken over
      return true;
    }
    payload->reserve(chunk->total_bytes());
  }
  payload->append(chunk->data());
  return chunk->last();
}

}  // namespace mycelya
