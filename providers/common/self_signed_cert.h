// SPDX-License-Identifier: AGPL-3.0-or-later
//
// A certificate made for one machine, which its client then pins: a cloud
// machine's public address has no name a CA could vouch for, so the client
// makes the key pair, hands it to the machine through the provider's API,
// and accepts that one certificate and no other.
#pragma once

#include <string>

namespace mycelya {

struct CertificateAndKey {
  std::string certificate_pem;
  std::string private_key_pem;
};

// A self-signed P-256 certificate for DNS name `name`, valid for `days`.
// Throws std::runtime_error when OpenSSL fails.
CertificateAndKey make_self_signed_certificate(const std::string& name, int days);

}  // namespace mycelya
