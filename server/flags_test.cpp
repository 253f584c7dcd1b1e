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

TEST(Flags, AnAddressOthersCanReachNeedsAToken) {
  EXPECT_TRUE(Contains(flag_error({"--listen", "0.0.0.0:50051"}), "token is required"));
  Environment env{{{"MYCELYA_TOKEN", "t"}}};
  EXPECT_EQ(configure_args({"--listen", "0.0.0.0:50051"}, env).listen, "0.0.0.0:50051");
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
  EXPECT_TRUE(Contains(flag_error({"--memory-limit", "0"}), "positive"));
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
