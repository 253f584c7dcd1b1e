// SPDX-License-Identifier: AGPL-3.0-or-later
#include "core/joined_names.h"

namespace mycelya {

std::string joined_names(const std::vector<std::string>& names) {
  std::string text;
  for (const std::string& name : names) text += (text.empty() ? "" : ", ") + name;
  return text.empty() ? "(none)" : text;
}

}  // namespace mycelya
