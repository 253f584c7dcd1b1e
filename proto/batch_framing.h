// SPDX-License-Identifier: AGPL-3.0-or-later
//
// A Batch is nothing but its commands (field 3, repeated), so its encoding is
// the commands' framed encodings one after another. The client frames each
// command into its queue's bytes as the command is queued; a batch is then
// the queued bytes as they are, with no copy and no message in between.
#pragma once

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/wire_format_lite.h>

#include <cstdint>
#include <string>

#include "proto/mycelya.pb.h"

namespace mycelya {

// Appends `command` to `batch` as one entry of Batch.commands: the field's
// tag, the length, the command's bytes.
inline void append_framed_command(const wire::Command& command, std::string* batch) {
  using google::protobuf::internal::WireFormatLite;
  using google::protobuf::io::CodedOutputStream;
  const size_t size = command.ByteSizeLong();
  uint8_t header[1 + 10];
  uint8_t* end = CodedOutputStream::WriteTagToArray(
      WireFormatLite::MakeTag(wire::Batch::kCommandsFieldNumber,
                              WireFormatLite::WIRETYPE_LENGTH_DELIMITED),
      header);
  end = CodedOutputStream::WriteVarint32ToArray(static_cast<uint32_t>(size), end);
  batch->append(reinterpret_cast<const char*>(header), end - header);
  const size_t offset = batch->size();
  batch->resize(offset + size);
  command.SerializeWithCachedSizesToArray(reinterpret_cast<uint8_t*>(&(*batch)[offset]));
}

}  // namespace mycelya
