// SPDX-License-Identifier: AGPL-3.0-or-later
//
// mycelya-server's command line: parsing and checking, apart from the
// process, so tests can check every flag without starting a server.
#pragma once

#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "server/executor.h"

namespace mycelya {

extern const char kUsage[];

// A bad invocation: main prints it with a pointer to --help and exits 2.
class FlagError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// The flags as given (--flag=value or --flag value).
struct Flags {
  std::string listen = "127.0.0.1:0";
  std::optional<std::string> token_file;
  std::optional<std::string> token_env;
  std::string devices = "auto";
  std::optional<std::string> max_message_bytes;
  std::optional<std::string> memory_limit;
  std::optional<std::string> session_memory_limit;
  std::optional<std::string> max_sessions;
  std::optional<std::string> idle_timeout;
  std::optional<std::string> state_dir;
  std::optional<std::string> tls_cert;
  std::optional<std::string> tls_key;
  bool insecure = false;
  bool exit_with_parent = false;
  bool no_python = false;
  bool help = false;
};

// Parses the arguments after the program name. Throws FlagError for an
// unknown flag, a missing value or a stray argument.
Flags parse_flags(const std::vector<std::string>& args);

// What the server runs with.
struct ServerConfig {
  std::string listen;
  std::string token;  // empty: no token, which only local addresses allow
  // Every session's options; executor.server_budget is the server-wide
  // memory budget, shared by all of them.
  ExecutorOptions executor;
  int max_message_bytes = 0;
  int max_sessions = 0;
  int idle_timeout_seconds = 0;  // 0: never stop for want of clients
  // Where paused sessions keep their storages (server/state_folder.h);
  // empty: sessions cannot pause.
  std::string state_dir;
  // PEM text of the server's certificate chain and private key; both empty:
  // plaintext, which only local addresses (or --insecure) allow.
  std::string tls_cert_pem;
  std::string tls_key_pem;
  bool exit_with_parent = false;
  // Why Python functions (wire::Call) are refused; empty: they run.
  std::string no_python_reason;
};

// Checks the flags and gathers the configuration. `getenv` reads the
// environment (the token's variables) and `cuda_devices` is how many CUDA
// devices torch sees on this host. Throws FlagError.
ServerConfig configure(const Flags& flags, const std::function<const char*(const char*)>& getenv,
                       int cuda_devices);

}  // namespace mycelya
