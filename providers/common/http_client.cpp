// SPDX-License-Identifier: AGPL-3.0-or-later
#include "providers/common/http_client.h"

#include <curl/curl.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <stdexcept>

namespace mycelya {
namespace {

void init_curl_once() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

// The CA bundle: the wheel carries Debian's libcurl, whose built-in path
// other distributions lack, so look where each keeps it ($SSL_CERT_FILE or
// $CURL_CA_BUNDLE first). "" leaves libcurl's default.
const std::string& ca_bundle() {
  static const std::string path = [] {
    for (const char* name : {"CURL_CA_BUNDLE", "SSL_CERT_FILE"}) {
      const char* value = std::getenv(name);
      if (value && *value) return std::string(value);
    }
    for (const char* candidate :
         {"/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt",
          "/etc/ssl/ca-bundle.pem", "/etc/ssl/cert.pem",
          "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem"}) {
      if (access(candidate, R_OK) == 0) return std::string(candidate);
    }
    return std::string();
  }();
  return path;
}

size_t append_body(char* data, size_t size, size_t count, void* body) {
  static_cast<std::string*>(body)->append(data, size * count);
  return size * count;
}

size_t add_header(char* data, size_t size, size_t count, void* headers) {
  const std::string line(data, size * count);
  const size_t colon = line.find(':');
  if (colon != std::string::npos) {
    std::string name = line.substr(0, colon);
    std::transform(name.begin(), name.end(), name.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    std::string value = line.substr(colon + 1);
    const size_t begin = value.find_first_not_of(" \t");
    const size_t end = value.find_last_not_of(" \t\r\n");
    value = begin == std::string::npos ? "" : value.substr(begin, end - begin + 1);
    (*static_cast<std::map<std::string, std::string>*>(headers))[name] = value;
  }
  return size * count;
}

}  // namespace

HttpClient::HttpClient(std::string base_url, std::string bearer_token)
    : base_url_(std::move(base_url)), bearer_token_(std::move(bearer_token)) {
  while (!base_url_.empty() && base_url_.back() == '/') base_url_.pop_back();
  init_curl_once();
}

HttpResponse HttpClient::request(const std::string& method, const std::string& path,
                                 const std::string& json_body, std::chrono::milliseconds timeout,
                                 bool partial_ok) const {
  std::unique_ptr<CURL, decltype(&curl_easy_cleanup)> curl(curl_easy_init(), curl_easy_cleanup);
  if (!curl) throw std::runtime_error("cannot start an HTTP request (curl_easy_init failed)");
  const std::string url = base_url_ + path;
  HttpResponse response;
  curl_slist* raw_headers = nullptr;
  raw_headers = curl_slist_append(raw_headers, ("Authorization: Bearer " + bearer_token_).c_str());
  raw_headers = curl_slist_append(raw_headers, "Accept: application/json, text/event-stream");
  if (!json_body.empty())
    raw_headers = curl_slist_append(raw_headers, "Content-Type: application/json");
  std::unique_ptr<curl_slist, decltype(&curl_slist_free_all)> headers(raw_headers,
                                                                      curl_slist_free_all);
  CURL* handle = curl.get();
  curl_easy_setopt(handle, CURLOPT_URL, url.c_str());
  curl_easy_setopt(handle, CURLOPT_CUSTOMREQUEST, method.c_str());
  curl_easy_setopt(handle, CURLOPT_HTTPHEADER, headers.get());
  if (!json_body.empty()) {
    curl_easy_setopt(handle, CURLOPT_POSTFIELDS, json_body.c_str());
    curl_easy_setopt(handle, CURLOPT_POSTFIELDSIZE, static_cast<long>(json_body.size()));
  }
  curl_easy_setopt(handle, CURLOPT_WRITEFUNCTION, append_body);
  curl_easy_setopt(handle, CURLOPT_WRITEDATA, &response.body);
  curl_easy_setopt(handle, CURLOPT_HEADERFUNCTION, add_header);
  curl_easy_setopt(handle, CURLOPT_HEADERDATA, &response.headers);
  curl_easy_setopt(handle, CURLOPT_TIMEOUT_MS, static_cast<long>(timeout.count()));
  curl_easy_setopt(handle, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
  if (!ca_bundle().empty()) curl_easy_setopt(handle, CURLOPT_CAINFO, ca_bundle().c_str());
  // Threads of this process may be anywhere: no SIGALRM-based DNS timeouts.
  curl_easy_setopt(handle, CURLOPT_NOSIGNAL, 1L);
  const CURLcode code = curl_easy_perform(handle);
  curl_easy_getinfo(handle, CURLINFO_RESPONSE_CODE, &response.status);
  if (code == CURLE_OPERATION_TIMEDOUT && partial_ok && response.status != 0) return response;
  if (code == CURLE_PEER_FAILED_VERIFICATION || code == CURLE_SSL_CACERT_BADFILE ||
      code == CURLE_URL_MALFORMAT || code == CURLE_UNSUPPORTED_PROTOCOL) {
    throw HttpPermanentError(
        "no answer from " + method + " " + url + ": " + curl_easy_strerror(code) +
        (code == CURLE_PEER_FAILED_VERIFICATION
             ? " (its TLS certificate is not one this host's CA bundle vouches for; "
               "CURL_CA_BUNDLE or SSL_CERT_FILE names another bundle)"
             : ""));
  }
  if (code != CURLE_OK) {
    throw std::runtime_error("no answer from " + method + " " + url + ": " +
                             curl_easy_strerror(code));
  }
  return response;
}

}  // namespace mycelya
