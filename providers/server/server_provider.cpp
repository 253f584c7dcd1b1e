// SPDX-License-Identifier: AGPL-3.0-or-later
//
// The server provider: a mycelya-server the user runs (bring your own host),
// reached by address:
//
//   RemoteMachine("server", address="gpu-box:50051", token=..., tls_ca="ca.pem")
//
// Options:
//   address=          host:port of the server (required)
//   token=            the server's token (default: $MYCELYA_TOKEN)
//   tls_ca=           a CA certificate file the server's certificate chains to
//   tls_cert=         the server's own certificate file, pinned: only that
//                     certificate is accepted
//   tls_server_name=  the name the certificate carries, where the address's
//                     host is not it (an IP address, say)
//   insecure=True     plaintext; refused unless the address is loopback, as
//                     anyone on the path would read the token
//   connect_timeout=  seconds to wait for the server (default 30)
// With neither tls_ca nor tls_cert, the system's CA roots vouch for it.
//
// The machine is the server's: stop() ends this client's session, never the
// server. pause() ends the session after core saved its storages in the
// server's --state-dir; resume() opens a new session that restores them.
#include <arpa/inet.h>

#include <chrono>
#include <stdexcept>

#include "core/provider.h"
#include "providers/common/grpc_session.h"
#include "providers/common/provider_options.h"

namespace mycelya {
namespace {

struct ServerOptions {
  GrpcTarget target;
  double connect_timeout_s = 30;
};

// The host of "host:port", "[v6]:port" or "unix:/path".
std::string host_of(const std::string& address) {
  if (address.rfind('[', 0) == 0) return address.substr(1, address.find(']') - 1);
  return address.substr(0, address.rfind(':'));
}

bool is_loopback(const std::string& address) {
  if (address.rfind("unix:", 0) == 0) return true;
  const std::string host = host_of(address);
  if (host == "localhost") return true;
  in_addr v4{};
  if (inet_pton(AF_INET, host.c_str(), &v4) == 1) return (ntohl(v4.s_addr) >> 24) == 127;
  in6_addr v6{};
  return inet_pton(AF_INET6, host.c_str(), &v6) == 1 && IN6_IS_ADDR_LOOPBACK(&v6);
}

ServerOptions read_options(const MachineSpec& spec) {
  ProviderOptions options("server", spec.options);
  ServerOptions result;
  GrpcTarget& target = result.target;
  target.address = options.take_or("address", "");
  const std::optional<std::string> token = options.take("token");
  const std::string ca_pem = options.take_file("tls_ca");
  const std::string pinned_pem = options.take_file("tls_cert");
  target.tls_server_name = options.take_or("tls_server_name", "");
  const bool insecure = options.take_bool("insecure", false);
  result.connect_timeout_s = options.take_positive("connect_timeout", 30);
  options.finish();
  if (result.connect_timeout_s > 3600) {
    throw options.error("connect_timeout= is at most 3600 seconds");
  }

  const bool unix_socket = target.address.rfind("unix:", 0) == 0;
  if (target.address.empty() || (!unix_socket && (target.address.find(':') == std::string::npos ||
                                                  host_of(target.address).empty()))) {
    throw options.error(
        "address= must be the server's host:port, such as address=\"gpu-box:50051\"" +
        std::string(target.address.empty() ? "" : ", got '" + target.address + "'"));
  }
  if (!ca_pem.empty() && !pinned_pem.empty()) {
    throw options.error(
        "give tls_ca= (a CA) or tls_cert= (the server's pinned certificate), not both");
  }
  if (insecure && (!ca_pem.empty() || !pinned_pem.empty())) {
    throw options.error("insecure=True means plaintext; drop it to use tls_ca= or tls_cert=");
  }
  if (insecure && !is_loopback(target.address)) {
    throw options.error(
        "insecure=True (plaintext) is allowed only to a loopback address, since "
        "anyone on the path would read the token and the tensors; start the "
        "server with --tls-cert/--tls-key and pass tls_ca= or tls_cert=");
  }
  target.tls = !insecure;
  target.tls_root_certs_pem = ca_pem.empty() ? pinned_pem : ca_pem;
  if (token) {
    target.token = *token;
  } else if (const char* env = std::getenv("MYCELYA_TOKEN")) {
    target.token = env;
  }
  if (target.token.empty() && !is_loopback(target.address)) {
    throw options.error(
        "token= is missing (or set MYCELYA_TOKEN): the token "
        "mycelya-server was started with");
  }
  target.state_key = spec.state_key;
  return result;
}

class ServerProvider final : public Provider {
 public:
  std::string name() const override { return "server"; }

  void validate(const MachineSpec& spec) const override { read_options(spec); }

  std::unique_ptr<Session> start(const MachineSpec& spec, StartProgress& progress) override {
    const ServerOptions options = read_options(spec);
    progress.stage("connecting to " + options.target.address);
    const auto timeout =
        std::chrono::milliseconds(static_cast<long long>(options.connect_timeout_s * 1000));
    try {
      return std::make_unique<GrpcSession>(options.target, timeout);
    } catch (const std::exception& e) {
      throw std::runtime_error(std::string("server: ") + e.what());
    }
  }

  std::unique_ptr<Session> resume(const MachineSpec& spec, StartProgress& progress) override {
    return start(spec, progress);
  }
};

}  // namespace
}  // namespace mycelya

MYCELYA_DEFINE_PROVIDER(mycelya::ServerProvider)
