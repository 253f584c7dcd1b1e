// SPDX-License-Identifier: AGPL-3.0-or-later
#include "providers/runpod/runpod_api.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <sstream>
#include <thread>

namespace mycelya {
namespace {

constexpr const char* kDefaultBaseUrl = "https://api.runpod.io/v2";
// Tries for one call: 429s and 5xx beyond these are the user's to see.
constexpr int kAttempts = 5;
// The longest Retry-After honoured, so a call never sleeps for an hour.
constexpr int kMaxRetryAfterSeconds = 60;

std::string env_or(const char* name, const std::string& fallback) {
  const char* value = std::getenv(name);
  return value && *value ? value : fallback;
}

std::string require_key() {
  const std::string key = env_or("RUNPOD_API_KEY", "");
  if (key.empty()) {
    throw std::runtime_error(
        "runpod: RUNPOD_API_KEY is not set. Create an API key at "
        "https://www.runpod.io/console/user/settings and export RUNPOD_API_KEY=<key>.");
  }
  return key;
}

std::string url_encoded(const std::string& text) {
  std::ostringstream out;
  for (const unsigned char c : text) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out << c;
    } else {
      static const char* hex = "0123456789ABCDEF";
      out << '%' << hex[c >> 4] << hex[c & 15];
    }
  }
  return out.str();
}

}  // namespace

std::string string_field(const nlohmann::json& object, const char* name) {
  if (!object.is_object()) return "";
  const auto it = object.find(name);
  return it != object.end() && it->is_string() ? it->get<std::string>() : "";
}

std::string problem_detail(const HttpResponse& response) {
  const nlohmann::json body = nlohmann::json::parse(response.body, nullptr, false);
  if (body.is_object()) {
    std::string text = string_field(body, "detail");
    if (text.empty()) text = string_field(body, "title");
    if (body.contains("errors") && body["errors"].is_array()) {
      for (const auto& error : body["errors"]) {
        text += (text.empty() ? "" : "; ") +
                (error.is_string() ? error.get<std::string>() : error.dump());
      }
    }
    if (!text.empty()) return text;
  }
  return response.body.substr(0, 500);
}

namespace {

// The key travels in every request: plain http only to this host (a fake).
std::string checked_base_url() {
  const std::string url = env_or("RUNPOD_API_BASE_URL", kDefaultBaseUrl);
  const bool loopback = url.rfind("http://127.", 0) == 0 || url.rfind("http://localhost", 0) == 0 ||
                        url.rfind("http://[::1]", 0) == 0;
  if (url.rfind("https://", 0) != 0 && !loopback) {
    throw std::runtime_error(
        "runpod: RUNPOD_API_BASE_URL must be an https:// URL (plain http "
        "would send the API key in the clear), got " +
        url);
  }
  return url;
}

}  // namespace

RunPodApi::RunPodApi() : http_(checked_base_url(), require_key()) {}

HttpResponse RunPodApi::call(const std::string& method, const std::string& path,
                             const std::string& body, bool retry_server_errors) const {
  std::string last_failure;
  for (int attempt = 1; attempt <= kAttempts; ++attempt) {
    HttpResponse response;
    try {
      response = http_.request(method, path, body);
    } catch (const HttpPermanentError& e) {
      throw std::runtime_error(std::string("runpod: ") + e.what());
    } catch (const std::runtime_error& e) {
      // No answer at all: the API may be down for a moment. A create may
      // still have made its pod: its caller looks before trying again.
      if (!retry_server_errors) throw RunPodError(0, e.what());
      last_failure = e.what();
      std::this_thread::sleep_for(std::chrono::seconds(attempt));
      continue;
    }
    if (response.status == 401) {
      throw RunPodError(401,
                        "runpod: RunPod refused the API key (401: " + problem_detail(response) +
                            "). Check RUNPOD_API_KEY: it must be a key from "
                            "https://www.runpod.io/console/user/settings with read and "
                            "write access to pods.");
    }
    if (response.status == 402) {
      throw RunPodError(402,
                        "runpod: RunPod says the account's balance is too low to start a "
                        "pod (402: " +
                            problem_detail(response) +
                            "). Add funds at https://www.runpod.io/console/user/billing.");
    }
    if (response.status == 429 && attempt < kAttempts) {
      const int wait =
          std::clamp(std::atoi(response.header("retry-after").c_str()), 1, kMaxRetryAfterSeconds);
      std::this_thread::sleep_for(std::chrono::seconds(wait));
      continue;
    }
    if (response.status >= 500 && retry_server_errors && attempt < kAttempts) {
      last_failure = std::to_string(response.status) + ": " + problem_detail(response);
      std::this_thread::sleep_for(std::chrono::milliseconds(250 << attempt));
      continue;
    }
    return response;
  }
  throw std::runtime_error("runpod: " + method + " " + http_.base_url() + path + " failed " +
                           std::to_string(kAttempts) + " times; the last: " + last_failure +
                           ". RunPod may be down; try again later.");
}

nlohmann::json RunPodApi::gpu_catalog(int count, const std::string& cloud) const {
  const HttpResponse response =
      call("GET", "/catalog/gpus?include=AVAILABILITY&product=POD&count=" + std::to_string(count) +
                      "&cloud=" + cloud);
  if (response.status != 200) {
    throw RunPodError(response.status, "runpod: listing RunPod's GPU types failed (" +
                                           std::to_string(response.status) + ": " +
                                           problem_detail(response) + ")");
  }
  const nlohmann::json body = nlohmann::json::parse(response.body, nullptr, false);
  if (!body.is_object() || !body.contains("gpus") || !body["gpus"].is_array()) {
    throw std::runtime_error(
        "runpod: RunPod's GPU catalog came back in a form this plugin does "
        "not know: " +
        response.body.substr(0, 200));
  }
  return body["gpus"];
}

nlohmann::json RunPodApi::create_pod(const nlohmann::json& body) const {
  const HttpResponse response = call("POST", "/pods", body.dump(), /*retry_server_errors=*/false);
  if (response.status != 201 && response.status != 200) {
    throw RunPodError(response.status, problem_detail(response));
  }
  // A pod was made; an answer without its id is found by name instead.
  nlohmann::json pod = nlohmann::json::parse(response.body, nullptr, false);
  if (!string_field(pod, "id").empty()) return pod;
  if (const std::optional<nlohmann::json> found = find_pod(string_field(body, "name")))
    return *found;
  throw std::runtime_error(
      "runpod: RunPod answered the create with no pod id (" + response.body.substr(0, 200) +
      ") and no pod of that name exists; check https://www.runpod.io/console/pods");
}

nlohmann::json RunPodApi::get_pod(const std::string& id) const {
  const HttpResponse response = call("GET", "/pods/" + url_encoded(id));
  if (response.status != 200) {
    throw RunPodError(response.status, "runpod: reading pod " + id + " failed (" +
                                           std::to_string(response.status) + ": " +
                                           problem_detail(response) + ")");
  }
  nlohmann::json pod = nlohmann::json::parse(response.body, nullptr, false);
  if (!pod.is_object()) {
    throw std::runtime_error("runpod: RunPod answered GET /pods/" + id +
                             " with no pod object: " + response.body.substr(0, 200));
  }
  return pod;
}

std::optional<nlohmann::json> RunPodApi::find_pod(const std::string& name) const {
  std::vector<nlohmann::json> pods = find_pods(name);
  if (pods.empty()) return std::nullopt;
  return pods.front();
}

std::vector<nlohmann::json> RunPodApi::find_pods(const std::string& name) const {
  std::vector<nlohmann::json> found;
  const HttpResponse response = call("GET", "/pods");
  if (response.status != 200) {
    throw RunPodError(response.status, "runpod: listing pods failed (" +
                                           std::to_string(response.status) + ": " +
                                           problem_detail(response) + ")");
  }
  const nlohmann::json body = nlohmann::json::parse(response.body, nullptr, false);
  if (body.is_object() && body.contains("pods") && body["pods"].is_array()) {
    for (const auto& pod : body["pods"]) {
      if (string_field(pod, "name") == name && !string_field(pod, "id").empty()) {
        found.push_back(pod);
      }
    }
  }
  return found;
}

void RunPodApi::action(const std::string& id, const std::string& action) const {
  const HttpResponse response = call("POST", "/pods/" + url_encoded(id) + "/action",
                                     nlohmann::json{{"action", action}}.dump());
  if (response.status != 200 && response.status != 204) {
    throw RunPodError(response.status, problem_detail(response));
  }
}

void RunPodApi::terminate(const std::string& id) const {
  const HttpResponse response = call("DELETE", "/pods/" + url_encoded(id));
  if (response.status != 204 && response.status != 200 && response.status != 404) {
    throw RunPodError(response.status, "runpod: terminating pod " + id + " failed (" +
                                           std::to_string(response.status) + ": " +
                                           problem_detail(response) +
                                           "); terminate it at https://www.runpod.io/console/pods "
                                           "so it stops billing.");
  }
}

std::string RunPodApi::log_tail(const std::string& id, int lines) const {
  try {
    // A live pod's log is a stream that does not end: take what comes in 5 s.
    const HttpResponse response =
        http_.request("GET", "/pods/" + url_encoded(id) + "/logs?tail=" + std::to_string(lines), "",
                      std::chrono::seconds(5), /*partial_ok=*/true);
    if (response.status != 200) return "";
    std::string text;
    std::istringstream events(response.body);
    for (std::string line; std::getline(events, line);) {
      if (line.rfind("data:", 0) != 0) continue;
      const nlohmann::json event = nlohmann::json::parse(line.substr(5), nullptr, false);
      text += (event.is_object() ? string_field(event, "line") : line.substr(5)) + "\n";
    }
    return text;
  } catch (const std::exception&) {
    return "";  // the log is an aid to the error being raised, never a new error
  }
}

}  // namespace mycelya
