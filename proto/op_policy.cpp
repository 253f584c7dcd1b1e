// SPDX-License-Identifier: AGPL-3.0-or-later
#include "proto/op_policy.h"

#include <array>

namespace mycelya {
namespace {

bool starts_with(const std::string& text, const char* prefix) { return text.rfind(prefix, 0) == 0; }

bool names_a_file(const c10::FunctionSchema& schema) {
  const std::string& name = schema.name();
  if (name == "aten::from_file" || name == "aten::_print") return true;
  for (const c10::Argument& argument : schema.arguments()) {
    const std::string& arg = argument.name();
    if (arg == "filename" || arg == "path" || arg == "file") return true;
  }
  return false;
}

// Ops whose results hold bytes no kernel wrote.
bool hands_out_unwritten_memory(const c10::FunctionSchema& schema) {
  const std::string base = schema.name().substr(6);  // after "aten::"
  static const std::array<const char*, 5> kPrefixes = {"empty", "new_empty", "_empty", "resize",
                                                       "_resize"};
  for (const char* prefix : kPrefixes) {
    if (starts_with(base, prefix)) return true;
  }
  return base == "set_" || base == "set" || base == "set_data" || base == "sparse_resize" ||
         base == "sparse_resize_" || base == "sparse_resize_and_clear" ||
         base == "sparse_resize_and_clear_" || base == "_copy_from_and_resize";
}

}  // namespace

std::optional<std::string> refusal_reason(const c10::FunctionSchema& schema) {
  if (!starts_with(schema.name(), "aten::")) {
    return "mycelya machines run ATen ops only; " + schema.name() +
           " belongs to another library, which the machine does not load";
  }
  if (names_a_file(schema)) {
    return schema.name() +
           " reaches files or processes on the remote machine by name, which mycelya never "
           "allows. Read the file locally and move the tensor: torch.from_file(...).to(device)";
  }
  if (hands_out_unwritten_memory(schema)) {
    return schema.name() +
           " hands out memory without writing it; the mycelya client allocates and resizes "
           "storages itself and never sends this op";
  }
  return std::nullopt;
}

}  // namespace mycelya
