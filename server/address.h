// SPDX-License-Identifier: AGPL-3.0-or-later
//
// What a listening address says about who can reach it. Its own library so
// that the command line (server/flags.h) and the service need not depend on
// each other for it.
#pragma once

#include <string>

namespace mycelya {

// True for addresses only this machine can reach: "unix:..." sockets and TCP on
// 127.0.0.0/8, localhost or [::1]. Everything else needs a token.
bool is_local_address(const std::string& address);

}  // namespace mycelya
