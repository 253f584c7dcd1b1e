// SPDX-License-Identifier: AGPL-3.0-or-later
//
// Finds provider plugins (libmycelya_provider_<name>.so) and loads them by name.
// Search order: each folder of $MYCELYA_PROVIDER_PATH (colon-separated), then
// the folders added with add_plugin_dir (the Python package adds its own).
#pragma once

#include <string>
#include <vector>

#include "core/provider.h"

namespace mycelya {

void add_plugin_dir(const std::string& dir);

// Provider names ("mock", "local-cuda", ...) found on the search path, sorted.
std::vector<std::string> available_providers();

// Loads (once) and returns the named provider. Throws std::invalid_argument
// listing the providers found when there is none of that name, and
// std::runtime_error when the plugin exists but cannot be loaded.
Provider& load_provider(const std::string& name);

}  // namespace mycelya
