// SPDX-License-Identifier: AGPL-3.0-or-later
//
// The version handshake, for both sides of a connection. ATen's op schemas
// change between torch releases, so a client and a server built against
// different torch major.minor versions would misread each other's op records:
// wrong ops, not errors. The client sends its protocol and torch versions as
// call metadata and the server refuses a mismatch before the session starts;
// the server's Hello carries its own, which the client checks too (a server
// too old to check is then refused by the client).
#pragma once

#include <torch/headeronly/version.h>

#include <cstdint>
#include <optional>
#include <string>

#include "proto/mycelya.pb.h"

namespace mycelya {

constexpr char kProtocolMetadataKey[] = "x-mycelya-protocol";
constexpr char kTorchMetadataKey[] = "x-mycelya-torch";
// Names the session's state folder on a server with --state-dir
// (server/state_folder.h): 64 hex digits, random, known to its client only.
constexpr char kStateKeyMetadataKey[] = "x-mycelya-state-key";

// The torch this binary was built against (and so must run with).
inline std::string torch_version() { return TORCH_VERSION; }

// "2.13" of "2.13.0+cu128"; the whole text when it has no second dot.
inline std::string major_minor(const std::string& version) {
  const size_t first = version.find('.');
  if (first == std::string::npos) return version;
  const size_t second = version.find_first_not_of("0123456789", first + 1);
  return version.substr(0, second);
}

// Why a peer with these versions cannot be served, or nullopt when it can.
// `peer` names the other side ("client" or "server") for the message.
inline std::optional<std::string> version_mismatch(uint32_t peer_protocol,
                                                   const std::string& peer_torch,
                                                   const std::string& peer) {
  const bool we_are_server = peer == "client";
  const std::string ours = we_are_server ? "server" : "client";
  if (peer_protocol != wire::PROTOCOL_VERSION_CURRENT) {
    return "the mycelya " + peer + " speaks protocol version " + std::to_string(peer_protocol) +
           " and this " + ours + " " + std::to_string(wire::PROTOCOL_VERSION_CURRENT) +
           ": install the same mycelya-torch release on both sides";
  }
  if (major_minor(peer_torch) != major_minor(torch_version())) {
    const std::string client_torch = we_are_server ? peer_torch : torch_version();
    const std::string server_torch = we_are_server ? torch_version() : peer_torch;
    return "the mycelya client runs torch " + client_torch + " and the server torch " +
           server_torch +
           "; their op schemas differ, so they cannot work together. Install torch==" +
           server_torch + " on the client (pip install torch==" + server_torch +
           "), or start a server built for torch " + client_torch;
  }
  return std::nullopt;
}

}  // namespace mycelya
