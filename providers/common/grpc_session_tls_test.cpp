// SPDX-License-Identifier: AGPL-3.0-or-later
//
// GrpcSession against a real mycelya-server over TCP on loopback, with TLS:
// a CA file, a pinned certificate, and each way it must fail cleanly (a
// wrong certificate, plaintext on one side, a wrong token, a server gone).
// The certificates are made by openssl for each run; none is committed.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>

#include "providers/common/grpc_session.h"
#include "tests/cc/gtest_helpers.h"
#include "tests/cc/server_process.h"

namespace mycelya {
namespace {

constexpr std::chrono::seconds kConnectTimeout{5};

// Runs an openssl command in `dir`; fails the test if it fails.
void openssl(const std::string& dir, const std::string& args) {
  const std::string command = "cd '" + dir + "' && openssl " + args + " >/dev/null 2>&1";
  ASSERT_EQ(std::system(command.c_str()), 0) << command;
}

class TlsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = ::testing::TempDir();
    const std::string san = "-addext 'subjectAltName=DNS:localhost,IP:127.0.0.1'";
    // A CA and a server certificate it signed.
    openssl(dir_,
            "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 "
            "-subj /CN=test-ca -keyout ca.key -out ca.pem");
    openssl(dir_, "req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost " +
                      san + " -keyout server.key -out server.csr");
    openssl(dir_,
            "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 "
            "-copy_extensions copy -out server.pem");
    // A self-signed certificate, to pin, and another nobody vouches for.
    openssl(dir_,
            "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 "
            "-subj /CN=mycelya-machine " +
                san + " -keyout pinned.key -out pinned.pem");
    openssl(dir_,
            "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 "
            "-subj /CN=stranger " +
                san + " -keyout stranger.key -out stranger.pem");
  }

  void SetUp() override {
    if (ServerProcess::binary().empty()) GTEST_SKIP() << "needs bazel test's runfiles";
  }

  // A server on 127.0.0.1 with this certificate (or plaintext when empty).
  std::unique_ptr<ServerProcess> start(const std::string& cert) {
    std::vector<std::string> args = {"--listen", "127.0.0.1:0", "--devices=cpu"};
    if (!cert.empty()) {
      args.insert(args.end(), {"--tls-cert", dir_ + "/" + cert + ".pem", "--tls-key",
                               dir_ + "/" + cert + ".key"});
    }
    auto server =
        std::make_unique<ServerProcess>(args, std::vector<std::string>{"MYCELYA_TOKEN=t"});
    address_ = address_of(server->read_line());
    EXPECT_FALSE(address_.empty());
    return server;
  }

  GrpcTarget target(const std::string& roots, const std::string& token = "t") {
    GrpcTarget target{address_, token};
    target.tls = !roots.empty();
    if (!roots.empty()) target.tls_root_certs_pem = read_whole(dir_ + "/" + roots + ".pem");
    return target;
  }

  // The error of connecting, or "" when the session works.
  std::string connect_error(const GrpcTarget& target) {
    try {
      GrpcSession session(target, kConnectTimeout);
      session.stop();
      return "";
    } catch (const std::runtime_error& e) {
      return e.what();
    }
  }

  static std::string dir_;
  std::string address_;
};

std::string TlsTest::dir_;

TEST_F(TlsTest, ACertificateTheCaSignedIsTrustedAndTheSessionWorks) {
  auto server = start("server");
  GrpcSession session(target("ca"), kConnectTimeout);
  EXPECT_EQ(session.devices(), std::vector<std::string>{"cpu"});
  wire::Request stats;
  stats.mutable_stats();
  std::string payload;
  wire::Response response;
  ASSERT_TRUE(response.ParseFromString(session.request(stats.SerializeAsString(), &payload)));
  EXPECT_GT(response.stats().memory_limit(), 0u);
  session.stop();
}

TEST_F(TlsTest, APinnedSelfSignedCertificateIsTrusted) {
  auto server = start("pinned");
  EXPECT_EQ(connect_error(target("pinned")), "");
}

TEST_F(TlsTest, AWrongCertificateFailsCleanly) {
  auto server = start("stranger");
  EXPECT_TRUE(Contains(connect_error(target("ca")), "over TLS"));
  EXPECT_TRUE(Contains(connect_error(target("pinned")), "does its certificate match"));
}

TEST_F(TlsTest, PlaintextOnEitherSideFailsCleanly) {
  {
    auto server = start("server");
    EXPECT_TRUE(Contains(connect_error(target("")), "rather than TLS"));
  }
  auto server = start("");
  EXPECT_TRUE(Contains(connect_error(target("ca")), "does it speak TLS"));
}

TEST_F(TlsTest, TheTokenStillApplies) {
  auto server = start("server");
  EXPECT_TRUE(Contains(connect_error(target("ca", "wrong")), "wrong or missing token"));
}

TEST_F(TlsTest, AServerThatGoesAwayFailsTheNextCallWithoutAHang) {
  auto server = start("server");
  GrpcSession session(target("ca"), kConnectTimeout);
  ASSERT_EQ(kill(server->pid(), SIGKILL), 0);
  server->wait();
  std::string payload;
  const std::string error = message_of<std::runtime_error>(
      [&] { session.request(wire::Request().SerializeAsString(), &payload); });
  EXPECT_FALSE(error.empty());
}

}  // namespace
}  // namespace mycelya
