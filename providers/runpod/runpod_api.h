// SPDX-License-Identifier: AGPL-3.0-or-later
//
// RunPod's REST API v2 (https://api.runpod.io/v2; RUNPOD_API_BASE_URL
// overrides it), the calls the runpod provider makes, with RunPod's errors
// turned into messages a user can act on: 401 names the variable to set,
// 402 the balance, 429 waits for Retry-After, 5xx is tried again.
#pragma once

#include <chrono>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "providers/common/http_client.h"

namespace mycelya {

// A problem+json answer that is not the caller's to retry: its status and
// RunPod's own detail, in the message.
class RunPodError : public std::runtime_error {
 public:
  RunPodError(long status, const std::string& message)
      : std::runtime_error(message), status_(status) {}
  long status() const { return status_; }

 private:
  long status_;
};

class RunPodApi {
 public:
  // Reads RUNPOD_API_KEY and RUNPOD_API_BASE_URL; throws std::runtime_error
  // naming the variable when the key is missing.
  RunPodApi();

  nlohmann::json gpu_catalog(int count, const std::string& cloud) const;
  // POST /v2/pods. A 5xx may still have made the pod: the caller looks for it
  // by name (find_pod) before trying again.
  nlohmann::json create_pod(const nlohmann::json& body) const;
  nlohmann::json get_pod(const std::string& id) const;
  std::optional<nlohmann::json> find_pod(const std::string& name) const;
  // Every pod of that name (a create retried after no answer may make two).
  std::vector<nlohmann::json> find_pods(const std::string& name) const;
  void action(const std::string& id, const std::string& action) const;
  // DELETE; true once the pod is gone (404 counts as gone).
  void terminate(const std::string& id) const;
  // The last `lines` lines of the pod's log, best effort ("" when none came).
  std::string log_tail(const std::string& id, int lines) const;

  const std::string& base_url() const { return http_.base_url(); }

 private:
  // Sends the request, waiting out 429s and retrying 5xx and no answer at
  // all (`retry_server_errors` false: the first 5xx throws RunPodError).
  HttpResponse call(const std::string& method, const std::string& path,
                    const std::string& body = "", bool retry_server_errors = true) const;

  HttpClient http_;
};

// The field's text, or "" where the object lacks it or it is not a string
// (an API answer is read, never trusted).
std::string string_field(const nlohmann::json& object, const char* name);

// RunPod's problem+json detail (or the body itself), for messages.
std::string problem_detail(const HttpResponse& response);

}  // namespace mycelya
