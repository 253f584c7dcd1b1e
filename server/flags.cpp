// SPDX-License-Identifier: AGPL-3.0-or-later
#include "server/flags.h"

#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>

#include "proto/payload_chunks.h"
#include "proto/transport_tuning.h"
#include "server/address.h"

namespace mycelya {

const char kUsage[] = R"(Usage: mycelya-server [flags]

Serves the mycelya executor over gRPC. Prints one line to stdout once it
listens, "mycelya-server listening on <address>", with the real address (the
picked port when asked for port 0); logs go to stderr. Every Session stream
gets an executor, and storages, of its own. SIGTERM or SIGINT stops it cleanly.

Flags (--flag=value or --flag value):
  --listen ADDRESS        HOST:PORT (port 0 picks a free one) or unix:/path.
                          Default 127.0.0.1:0. Addresses other machines can
                          reach require a token and TLS (or --insecure).
  --token-file PATH       Read the token from a file (surrounding whitespace
                          is trimmed).
  --token-env NAME        Read the token from the environment variable NAME.
                          Without either flag, MYCELYA_TOKEN is used if set.
                          Clients send "authorization: Bearer <token>".
  --devices LIST          "auto" (default: cuda:0..cuda:N-1 when torch sees
                          CUDA devices, then cpu) or a comma-separated list
                          such as "cpu" or "cuda:0,cpu". Device slot i of the
                          protocol is the i-th entry.
  --tls-cert PATH         The server's certificate chain (PEM) for TLS; or
                          MYCELYA_TLS_CERT, holding a path or the PEM text.
  --tls-key PATH          Its private key (PEM); or MYCELYA_TLS_KEY.
  --insecure              Allow plaintext on an address other machines can
                          reach (anyone on the path reads the token).
  --max-message-bytes N   Largest gRPC message either way (default 64 MiB).
  --memory-limit BYTES    Memory all sessions together may hold in storages,
                          counting each storage's bookkeeping (default: half
                          of this machine's memory or cgroup limit, or
                          MYCELYA_MEMORY_LIMIT).
  --session-memory-limit BYTES
                          The most one session may hold (default: all of
                          --memory-limit).
  --max-sessions N        Sessions open at once (default 64); more are refused.
  --idle-timeout SECONDS  Stop once no client has sent anything for this long
                          (default 0: never). Stops a cloud machine's billing
                          when its client vanished. Sessions still open
                          are saved first when --state-dir is given.
  --state-dir PATH        Folder for paused sessions (machine.pause()): each
                          session's storages go to PATH/<its state key>.
                          A session whose client vanished, or that is open
                          when the server stops, is saved there too.
  --exit-with-parent      Stop (as on SIGTERM) when the parent process dies.
  --no-python             Refuse Python functions (@mycelya_torch.remote,
                          load_huggingface_model, pip_install). They run
                          code as this server's user for any token holder,
                          so they also need a token.
  --help                  Print this and exit.
)";

namespace {

std::string trim(const std::string& text) {
  const char* space = " \t\r\n\f\v";
  const size_t begin = text.find_first_not_of(space);
  if (begin == std::string::npos) return "";
  return text.substr(begin, text.find_last_not_of(space) - begin + 1);
}

// Digits only: strtoull alone would accept "-1", " 12" or "12abc".
std::optional<uint64_t> parse_count(const std::string& text) {
  if (text.empty() || text.size() > 20 ||
      text.find_first_not_of("0123456789") != std::string::npos) {
    return std::nullopt;
  }
  errno = 0;
  const unsigned long long value = std::strtoull(text.c_str(), nullptr, 10);
  if (errno == ERANGE) return std::nullopt;
  return value;
}

std::string read_file(const std::string& path, const std::string& what) {
  std::ifstream file(path, std::ios::binary);
  if (!file) throw FlagError("cannot read " + what + " " + path);
  std::stringstream contents;
  contents << file.rdbuf();
  return contents.str();
}

std::string read_token(const Flags& flags, const std::function<const char*(const char*)>& getenv) {
  if (flags.token_file && flags.token_env) {
    throw FlagError("give one of --token-file and --token-env, not both");
  }
  if (flags.token_file) {
    const std::string token = trim(read_file(*flags.token_file, "the token file"));
    if (token.empty()) throw FlagError("the token file " + *flags.token_file + " is empty");
    return token;
  }
  // Asked for by name, the token must be there: silently running without one
  // would let every local user in.
  if (flags.token_env) {
    const char* value = getenv(flags.token_env->c_str());
    const std::string token = value ? trim(value) : "";
    if (token.empty()) {
      throw FlagError("the environment variable " + *flags.token_env + " is not set");
    }
    return token;
  }
  const char* value = getenv("MYCELYA_TOKEN");
  return value ? trim(value) : "";
}

// A PEM file named by the flag, else by the environment variable, which may
// also hold the PEM text itself (a container's secret).
std::string read_pem(const std::optional<std::string>& flag, const char* env_name,
                     const std::function<const char*(const char*)>& getenv, const char* what) {
  if (flag) return read_file(*flag, what);
  const char* value = getenv(env_name);
  if (!value || trim(value).empty()) return "";
  const std::string text = trim(value);
  if (text.rfind("-----BEGIN", 0) == 0) return text + "\n";
  return read_file(text, what);
}

// A whole number of units from `low` to `high`, for --flag.
uint64_t parse_bounded(const std::string& flag, const std::string& text, uint64_t low,
                       uint64_t high, const char* unit) {
  const std::optional<uint64_t> value = parse_count(text);
  if (!value || *value < low || *value > high) {
    throw FlagError("--" + flag + " must be a number of " + unit + " from " + std::to_string(low) +
                    " to " + std::to_string(high));
  }
  return *value;
}

void parse_devices(const std::string& list, int cuda_devices, ExecutorOptions* options) {
  if (list == "auto") {
    for (int i = 0; i < cuda_devices; ++i) {
      options->devices.emplace_back(c10::kCUDA, static_cast<c10::DeviceIndex>(i));
      options->device_names.push_back("cuda:" + std::to_string(i));
    }
    options->devices.emplace_back(c10::kCPU);
    options->device_names.push_back("cpu");
    return;
  }
  std::stringstream items(list);
  std::string item;
  while (std::getline(items, item, ',')) {
    item = trim(item);
    std::optional<c10::Device> device;
    if (item == "cpu") {
      device.emplace(c10::kCPU);
    } else if (item == "cuda" || item.rfind("cuda:", 0) == 0) {
      const std::optional<uint64_t> index = item == "cuda" ? 0 : parse_count(item.substr(5));
      if (!index) throw FlagError("--devices: cannot read the CUDA index in \"" + item + "\"");
      if (cuda_devices == 0) {
        throw FlagError("--devices asks for " + item +
                        ", but torch sees no CUDA device on this host (a CPU-only torch, or no "
                        "GPU)");
      }
      if (*index >= static_cast<uint64_t>(cuda_devices)) {
        throw FlagError("--devices asks for " + item + ", but this host has " +
                        std::to_string(cuda_devices) + " CUDA device(s)");
      }
      device.emplace(c10::kCUDA, static_cast<c10::DeviceIndex>(*index));
    } else {
      throw FlagError("--devices: unknown device \"" + item + "\" (use cpu, cuda or cuda:N)");
    }
    // Names are what clients see in Hello, so they are spelled one way.
    const std::string name = device->is_cuda() ? "cuda:" + std::to_string(device->index()) : "cpu";
    for (const std::string& seen : options->device_names) {
      if (seen == name) throw FlagError("--devices lists " + name + " twice");
    }
    options->devices.push_back(*device);
    options->device_names.push_back(name);
  }
  if (options->devices.empty()) throw FlagError("--devices is empty");
}

}  // namespace

Flags parse_flags(const std::vector<std::string>& args) {
  Flags flags;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg.rfind("--", 0) != 0) throw FlagError("unexpected argument \"" + arg + "\"");
    const size_t equals = arg.find('=');
    const std::string name =
        arg.substr(2, equals == std::string::npos ? std::string::npos : equals - 2);
    std::optional<std::string> inline_value;
    if (equals != std::string::npos) inline_value = arg.substr(equals + 1);

    if (name == "help" || name == "exit-with-parent" || name == "insecure" || name == "no-python") {
      if (inline_value) throw FlagError("--" + name + " takes no value");
      (name == "help"        ? flags.help
       : name == "insecure"  ? flags.insecure
       : name == "no-python" ? flags.no_python
                             : flags.exit_with_parent) = true;
      continue;
    }
    std::string* target = nullptr;
    std::optional<std::string>* optional_target = nullptr;
    if (name == "listen") {
      target = &flags.listen;
    } else if (name == "devices") {
      target = &flags.devices;
    } else if (name == "max-message-bytes") {
      optional_target = &flags.max_message_bytes;
    } else if (name == "token-file") {
      optional_target = &flags.token_file;
    } else if (name == "token-env") {
      optional_target = &flags.token_env;
    } else if (name == "memory-limit") {
      optional_target = &flags.memory_limit;
    } else if (name == "session-memory-limit") {
      optional_target = &flags.session_memory_limit;
    } else if (name == "max-sessions") {
      optional_target = &flags.max_sessions;
    } else if (name == "state-dir") {
      optional_target = &flags.state_dir;
    } else if (name == "idle-timeout") {
      optional_target = &flags.idle_timeout;
    } else if (name == "tls-cert") {
      optional_target = &flags.tls_cert;
    } else if (name == "tls-key") {
      optional_target = &flags.tls_key;
    } else {
      throw FlagError("unknown flag --" + name);
    }
    std::string value;
    if (inline_value) {
      value = *inline_value;
    } else {
      if (i + 1 >= args.size()) throw FlagError("--" + name + " needs a value");
      value = args[++i];
    }
    if (target) {
      *target = value;
    } else {
      *optional_target = value;
    }
  }
  return flags;
}

ServerConfig configure(const Flags& flags, const std::function<const char*(const char*)>& getenv,
                       int cuda_devices) {
  ServerConfig config;
  config.listen = flags.listen;
  config.exit_with_parent = flags.exit_with_parent;
  config.token = read_token(flags, getenv);
  if (flags.no_python) {
    config.no_python_reason = "this server was started with --no-python";
  } else if (config.token.empty()) {
    config.no_python_reason =
        "this server has no token, and a Python function runs code as the server's user: start "
        "it with a token (--token-file, --token-env or MYCELYA_TOKEN)";
  }
  if (config.token.empty() && !is_local_address(flags.listen)) {
    throw FlagError("--listen " + flags.listen +
                    " is reachable from other machines, so a token is required: use --token-file, "
                    "--token-env or MYCELYA_TOKEN");
  }
  // Below two chunks' worth, downloads could not be sent at all.
  config.max_message_bytes =
      flags.max_message_bytes
          ? static_cast<int>(parse_bounded("max-message-bytes", *flags.max_message_bytes,
                                           2 * kPayloadChunkBytes, INT_MAX, "bytes"))
          : kDefaultMaxMessageBytes;
  const uint64_t budget = flags.memory_limit ? parse_bounded("memory-limit", *flags.memory_limit, 1,
                                                             UINT64_MAX, "bytes")
                                             : default_memory_limit();
  config.executor.server_budget = std::make_shared<MemoryBudget>(budget);
  config.executor.memory_limit_bytes =
      flags.session_memory_limit
          ? parse_bounded("session-memory-limit", *flags.session_memory_limit, 1, budget, "bytes")
          : budget;
  config.max_sessions = flags.max_sessions
                            ? static_cast<int>(parse_bounded("max-sessions", *flags.max_sessions, 1,
                                                             4096, "sessions"))
                            : 64;
  config.idle_timeout_seconds =
      flags.idle_timeout ? static_cast<int>(parse_bounded("idle-timeout", *flags.idle_timeout, 0,
                                                          365 * 24 * 3600, "seconds"))
                         : 0;
  if (flags.state_dir) {
    if (flags.state_dir->empty()) throw FlagError("--state-dir needs a folder");
    config.state_dir = *flags.state_dir;
  }
  config.tls_cert_pem = read_pem(flags.tls_cert, "MYCELYA_TLS_CERT", getenv, "the TLS certificate");
  config.tls_key_pem = read_pem(flags.tls_key, "MYCELYA_TLS_KEY", getenv, "the TLS key");
  if (config.tls_cert_pem.empty() != config.tls_key_pem.empty()) {
    throw FlagError(
        "TLS needs both a certificate and its key: give --tls-cert and --tls-key "
        "(or MYCELYA_TLS_CERT and MYCELYA_TLS_KEY)");
  }
  if (config.tls_cert_pem.empty() && !is_local_address(flags.listen) && !flags.insecure) {
    throw FlagError("--listen " + flags.listen +
                    " is reachable from other machines, so TLS is required: give --tls-cert and "
                    "--tls-key, or --insecure to send the token and tensors in plaintext");
  }
  parse_devices(flags.devices, cuda_devices, &config.executor);
  return config;
}

}  // namespace mycelya
