// SPDX-License-Identifier: AGPL-3.0-or-later
//
// mycelya-server's flags, checked without starting a server (service_test's
// BinaryTest checks that the binary exits 2 on a bad one).
#include "server/flags.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "tests/cc/gtest_helpers.h"

namespace mycelya {
namespace {

// An environment of its own for each test.
struct Environment {
  std::map<std::string, std::string> variables;
  std::function<const char*(const char*)> getenv() const {
    return [this](const char* name) -> const char* {
      const auto it = variables.find(name);
      return it == variables.end() ? nullptr : it->second.c_str();
    };
  }
};

ServerConfig configure_args(const std::vector<std::string>& args, const Environment& env = {},
                            int cuda_devices = 0) {
  return configure(parse_flags(args), env.getenv(), cuda_devices);
}

std::string flag_error(const std::vector<std::string>& args, const Environment& env = {},
                       int cuda_devices = 0) {
  return message_of<FlagError>([&] { configure_args(args, env, cuda_devices); });
}

TEST(Flags, DefaultsServeLoopbackWithoutAToken) {
  const ServerConfig config = configure_args({});
  EXPECT_EQ(config.listen, "127.0.0.1:0");
  EXPECT_EQ(config.token, "");
  EXPECT_EQ(config.executor.device_names, std::vector<std::string>{"cpu"});
  EXPECT_EQ(config.max_message_bytes, 64 << 20);
  EXPECT_GT(config.executor.memory_limit_bytes, 0u);
  EXPECT_FALSE(config.exit_with_parent);
}

TEST(Flags, BothSpellingsOfAValue) {
  const ServerConfig config = configure_args({"--listen=unix:/tmp/s", "--memory-limit", "4096",
                                              "--max-message-bytes=8388608", "--exit-with-parent"});
  EXPECT_EQ(config.listen, "unix:/tmp/s");
  EXPECT_EQ(config.executor.memory_limit_bytes, 4096u);
  EXPECT_EQ(config.executor.server_budget->limit(), 4096u);
  EXPECT_EQ(config.max_message_bytes, 8 << 20);
  EXPECT_TRUE(config.exit_with_parent);
  EXPECT_TRUE(parse_flags({"--help"}).help);
}

TEST(Flags, TheTokenComesFromOnePlace) {
  Environment env{{{"MYCELYA_TOKEN", " default \n"}, {"OTHER", "other"}}};
  EXPECT_EQ(configure_args({}, env).token, "default");
  EXPECT_EQ(configure_args({"--token-env", "OTHER"}, env).token, "other");
  const std::string file = ::testing::TempDir() + "/token";
  std::ofstream(file) << "  from-file\n";
  EXPECT_EQ(configure_args({"--token-file", file}, env).token, "from-file");
  EXPECT_TRUE(
      Contains(flag_error({"--token-file", file, "--token-env", "OTHER"}, env), "not both"));
  EXPECT_TRUE(Contains(flag_error({"--token-env", "UNSET"}, env), "UNSET is not set"));
  EXPECT_TRUE(Contains(flag_error({"--token-file", file + ".missing"}), "cannot read"));
  std::ofstream(file + ".empty") << " \n";
  EXPECT_TRUE(Contains(flag_error({"--token-file", file + ".empty"}), "is empty"));
}

TEST(Flags, PythonFunctionsNeedATokenAndCanBeTurnedOff) {
  Environment env{{{"MYCELYA_TOKEN", "t"}}};
  EXPECT_EQ(configure_args({}, env).no_python_reason, "");
  EXPECT_TRUE(Contains(configure_args({}).no_python_reason, "has no token"));
  EXPECT_TRUE(Contains(configure_args({"--no-python"}, env).no_python_reason, "--no-python"));
  EXPECT_TRUE(Contains(flag_error({"--no-python=1"}), "takes no value"));
}

TEST(Flags, AnAddressOthersCanReachNeedsATokenAndTls) {
  EXPECT_TRUE(Contains(flag_error({"--listen", "0.0.0.0:50051"}), "token is required"));
  EXPECT_TRUE(
      Contains(flag_error({"--listen", "0.0.0.0:50051", "--insecure"}), "token is required"));
  Environment env{{{"MYCELYA_TOKEN", "t"}}};
  EXPECT_TRUE(Contains(flag_error({"--listen", "0.0.0.0:50051"}, env), "TLS is required"));
  EXPECT_EQ(configure_args({"--listen", "0.0.0.0:50051", "--insecure"}, env).listen,
            "0.0.0.0:50051");
  EXPECT_EQ(configure_args({"--listen", "127.0.0.1:50051"}, env).tls_cert_pem, "");
}

TEST(Flags, TlsFromFilesOrTheEnvironment) {
  const std::string cert = ::testing::TempDir() + "/cert.pem";
  const std::string key = ::testing::TempDir() + "/key.pem";
  std::ofstream(cert) << "-----BEGIN CERTIFICATE-----\nC\n";
  std::ofstream(key) << "-----BEGIN PRIVATE KEY-----\nK\n";
  Environment env{{{"MYCELYA_TOKEN", "t"}}};
  const ServerConfig config =
      configure_args({"--listen", "0.0.0.0:1", "--tls-cert", cert, "--tls-key", key}, env);
  EXPECT_TRUE(Contains(config.tls_cert_pem, "CERTIFICATE"));
  EXPECT_TRUE(Contains(config.tls_key_pem, "PRIVATE KEY"));
  // A variable holds a path or the PEM text itself.
  env.variables["MYCELYA_TLS_CERT"] = cert;
  env.variables["MYCELYA_TLS_KEY"] = "-----BEGIN PRIVATE KEY-----\nfrom-env\n";
  const ServerConfig from_env = configure_args({"--listen", "0.0.0.0:1"}, env);
  EXPECT_TRUE(Contains(from_env.tls_cert_pem, "CERTIFICATE"));
  EXPECT_TRUE(Contains(from_env.tls_key_pem, "from-env"));
  EXPECT_TRUE(Contains(flag_error({"--tls-cert", cert}), "both a certificate and its key"));
  EXPECT_TRUE(Contains(flag_error({"--tls-cert", cert + ".missing", "--tls-key", key}),
                       "cannot read the TLS certificate"));
}

TEST(Flags, LimitsOfTheServerAndItsSessions) {
  const ServerConfig config =
      configure_args({"--memory-limit", "8192", "--session-memory-limit", "4096", "--max-sessions",
                      "3", "--idle-timeout", "90", "--state-dir", "/var/lib/mycelya"});
  EXPECT_EQ(config.executor.server_budget->limit(), 8192u);
  EXPECT_EQ(config.executor.memory_limit_bytes, 4096u);
  EXPECT_EQ(config.max_sessions, 3);
  EXPECT_EQ(config.idle_timeout_seconds, 90);
  EXPECT_EQ(config.state_dir, "/var/lib/mycelya");
  const ServerConfig defaults = configure_args({"--memory-limit", "8192"});
  EXPECT_EQ(defaults.executor.memory_limit_bytes, 8192u);
  EXPECT_EQ(defaults.max_sessions, 64);
  EXPECT_EQ(defaults.idle_timeout_seconds, 0);
  EXPECT_EQ(defaults.state_dir, "");  // sessions cannot pause
}

TEST(Flags, DevicesFollowTheHost) {
  EXPECT_EQ(configure_args({}, {}, 2).executor.device_names,
            (std::vector<std::string>{"cuda:0", "cuda:1", "cpu"}));
  const ServerConfig config = configure_args({"--devices", "cpu, cuda"}, {}, 1);
  EXPECT_EQ(config.executor.device_names, (std::vector<std::string>{"cpu", "cuda:0"}));
  EXPECT_TRUE(config.executor.devices[1].is_cuda());
  EXPECT_TRUE(Contains(flag_error({"--devices", "cuda:1"}, {}, 1), "has 1 CUDA device"));
  EXPECT_TRUE(Contains(flag_error({"--devices", "cuda"}), "no CUDA device"));
  EXPECT_TRUE(Contains(flag_error({"--devices", "cuda:x"}, {}, 1), "cannot read the CUDA index"));
  EXPECT_TRUE(Contains(flag_error({"--devices", "tpu"}), "unknown device"));
  EXPECT_TRUE(Contains(flag_error({"--devices", "cpu,cpu"}), "twice"));
  EXPECT_TRUE(Contains(flag_error({"--devices", ""}), "empty"));
}

TEST(Flags, NumbersAreDigitsInRange) {
  for (const char* bad : {"-1", " 12", "12abc", "", "99999999999999999999999"}) {
    EXPECT_TRUE(Contains(flag_error({"--memory-limit", bad}), "--memory-limit")) << bad;
    EXPECT_TRUE(Contains(flag_error({"--max-message-bytes", bad}), "--max-message-bytes")) << bad;
  }
  EXPECT_TRUE(Contains(flag_error({"--memory-limit", "0"}), "from 1"));
  EXPECT_TRUE(Contains(flag_error({"--max-sessions", "0"}), "--max-sessions"));
  EXPECT_TRUE(Contains(flag_error({"--idle-timeout", "-5"}), "--idle-timeout"));
  EXPECT_TRUE(Contains(flag_error({"--state-dir="}), "--state-dir"));
  EXPECT_TRUE(Contains(flag_error({"--memory-limit", "4096", "--session-memory-limit", "8192"}),
                       "--session-memory-limit"));
  EXPECT_TRUE(Contains(flag_error({"--max-message-bytes", "1024"}), "from"));
}

TEST(Flags, MalformedCommandLines) {
  EXPECT_TRUE(Contains(message_of<FlagError>([] { parse_flags({"--nope"}); }), "unknown flag"));
  EXPECT_TRUE(Contains(message_of<FlagError>([] { parse_flags({"--listen"}); }), "needs a value"));
  EXPECT_TRUE(Contains(message_of<FlagError>([] { parse_flags({"stray"}); }), "unexpected"));
  EXPECT_TRUE(Contains(message_of<FlagError>([] { parse_flags({"--help=yes"}); }), "no value"));
}

}  // namespace
}  // namespace mycelya
