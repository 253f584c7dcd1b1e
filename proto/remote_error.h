// SPDX-License-Identifier: AGPL-3.0-or-later
//
// The text of a remote op's failure, as the client raises it and as the
// storages that op should have written repeat it. The one place it is
// worded, for the executor and the client alike.
#pragma once

#include <string>

#include "proto/mycelya.pb.h"

namespace mycelya {

// "Remote op <op_name> failed: <message>".
inline std::string remote_op_failure(const std::string& op_name, const std::string& message) {
  return "Remote op " + op_name + " failed: " + message;
}

// An error a response carries, as the client raises it: naming its op, when
// one failed.
inline std::string remote_error_text(const wire::Error& error) {
  if (error.op_name().empty()) return error.message();
  return remote_op_failure(error.op_name(), error.message());
}

}  // namespace mycelya
