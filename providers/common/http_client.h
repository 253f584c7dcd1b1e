// SPDX-License-Identifier: AGPL-3.0-or-later
//
// HTTPS requests to a provider's control plane (libcurl): JSON in, the
// status, headers and body out. The caller decides what a status means;
// only a failure to get any answer (DNS, refused, TLS, timeout) throws.
#pragma once

#include <chrono>
#include <map>
#include <stdexcept>
#include <string>

namespace mycelya {

// No answer that trying again would not change: the URL is malformed, or
// the server's TLS certificate is not one the CA bundle vouches for.
class HttpPermanentError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct HttpResponse {
  long status = 0;
  std::string body;
  std::map<std::string, std::string> headers;  // names lower-cased
  // The header's value, or "" (names are case-insensitive: ask in lower case).
  std::string header(const std::string& name) const {
    const auto it = headers.find(name);
    return it == headers.end() ? "" : it->second;
  }
};

class HttpClient {
 public:
  // `base_url` such as "https://api.runpod.io/v2"; every request carries
  // "Authorization: Bearer <bearer_token>".
  HttpClient(std::string base_url, std::string bearer_token);

  // `method` GET, POST, DELETE...; `path` is appended to the base URL; a
  // non-empty `json_body` is sent as application/json. Throws
  // std::runtime_error when no response came within `timeout`
  // (HttpPermanentError when trying again cannot help). With
  // `partial_ok`, a timeout after some of the body arrived returns what came
  // (a stream that never ends, such as a live log).
  HttpResponse request(const std::string& method, const std::string& path,
                       const std::string& json_body = "",
                       std::chrono::milliseconds timeout = std::chrono::seconds(30),
                       bool partial_ok = false) const;

  const std::string& base_url() const { return base_url_; }

 private:
  std::string base_url_;
  std::string bearer_token_;
};

}  // namespace mycelya
