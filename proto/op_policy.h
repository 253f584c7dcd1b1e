// SPDX-License-Identifier: AGPL-3.0-or-later
//
// Which ATen ops a machine refuses to run, for both sides of the wire: the
// executor refuses them whoever sends them (a server faces the internet, and
// a token holder may send any op record), and the client refuses them before
// queueing, with a message that says what to do instead.
//
// Refused are:
//   - ops outside the aten namespace (only ATen's schemas are the protocol);
//   - ops that reach the machine's files or processes by name: from_file,
//     _print, anything with a "filename" or "path" argument;
//   - ops that hand out memory without writing it (empty*, resize*, set_*):
//     their bytes could be another session's. The client runs these itself
//     (allocation is local, storage growth is a ResizeStorage command), so a
//     record naming one never comes from mycelya's own client.
#pragma once

#include <ATen/core/function_schema.h>

#include <optional>
#include <string>

namespace mycelya {

// Why a machine refuses the op, or nullopt when it may run.
std::optional<std::string> refusal_reason(const c10::FunctionSchema& schema);

}  // namespace mycelya
