// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <string>
#include <vector>

namespace mycelya {

// Names for a message: "cuda:0, cpu", or "(none)" for an empty list, so
// that an error never ends in a bare colon.
std::string joined_names(const std::vector<std::string>& names);

}  // namespace mycelya
