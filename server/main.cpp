// SPDX-License-Identifier: AGPL-3.0-or-later
//
// mycelya-server: serves the executor over gRPC (see server/service.h).
//
// Whoever starts it (a provider over SSH, a container entry point, a person)
// learns the real address from the one line it prints to stdout, so it can
// listen on port 0 and never race another process for a fixed port. Logs go to
// stderr (server/log.h), leaving stdout to that line alone. The flags are in
// server/flags.h, how the process ends in server/process_lifetime.h.
#include <ATen/Context.h>
#include <absl/synchronization/mutex.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <google/protobuf/stubs/logging.h>
#include <grpcpp/grpcpp.h>
#include <malloc.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "proto/listening_line.h"
#include "proto/transport_tuning.h"
#include "server/device_properties.h"
#include "server/flags.h"
#include "server/grpc_log.h"
#include "server/log.h"
#include "server/process_lifetime.h"
#include "server/python_calls_loader.h"
#include "server/service.h"
#include "server/state_folder.h"

namespace mycelya {
namespace {

// A training step frees and allocates the same tensor sizes over and over,
// often above glibc's default mmap threshold (128 KiB, raised only as freed
// mmapped blocks are seen): each such tensor came as fresh pages, faulted in
// one at a time, and went back to the kernel on free. Serving them from the
// heap, and trimming it only past 1 GiB of free space, lets freed blocks be
// reused (as CUDA's caching allocator does on a GPU). Blocks above 32 MiB,
// glibc's largest threshold, are still mapped and unmapped apiece.
void keep_freed_memory() {
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
}

// Protobuf logs a line to stderr for each string field with invalid UTF-8
// it parses: a client could fill the server's disk with them, one line per
// few bytes sent. The parse fails all the same and the client hears of it.
void silence_protobuf_logging() { google::protobuf::SetLogHandler(nullptr); }

// Debian builds abseil without NDEBUG, so every absl::Mutex that gRPC locks
// also ran deadlock detection (a global lock graph): about 1.5% of the
// server's time per training step. Release builds of abseil skip it.
void skip_mutex_deadlock_detection() {
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
}

// How long in-flight calls get to finish once a stop is asked for. Sessions
// never end on their own, so this is how long stopping takes while one is open.
constexpr auto kShutdownGrace = std::chrono::seconds(1);

int cuda_device_count() {
  // hasCUDA() first: asking a CPU-only torch for the CUDA guard throws.
  if (!at::globalContext().hasCUDA()) return 0;
  return static_cast<int>(c10::impl::getDeviceGuardImpl(c10::kCUDA)->deviceCount());
}

// The address to print: gRPC tells the picked port, never the whole address.
std::string bound_address(const std::string& listen, int port) {
  if (listen.rfind("unix:", 0) == 0 || listen.rfind("unix-abstract:", 0) == 0) return listen;
  const size_t colon = listen.rfind(':');
  return listen.substr(0, colon) + ":" + std::to_string(port);
}

std::shared_ptr<grpc::ServerCredentials> credentials(const ServerConfig& config) {
  if (config.tls_cert_pem.empty()) return grpc::InsecureServerCredentials();
  grpc::SslServerCredentialsOptions options;
  options.pem_key_cert_pairs.push_back({config.tls_key_pem, config.tls_cert_pem});
  return grpc::SslServerCredentials(options);
}

std::unique_ptr<grpc::Server> build_server(const ServerConfig& config, MycelyaService* service,
                                           int* port) {
  grpc::ServerBuilder builder;
  builder.AddListeningPort(config.listen, credentials(config), port);
  builder.RegisterService(service);
  apply_shared_channel_args(config.max_message_bytes, [&builder](const char* name, int value) {
    builder.AddChannelArgument(name, value);
  });
  // gRPC sets SO_REUSEPORT by default: a second server on a fixed port would
  // then start "successfully" and take half of the new connections.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  // A client that vanishes without closing its connection (a crashed laptop, a
  // dropped NAT mapping) would otherwise hold its session's storages forever;
  // pings find it within about a minute and a half.
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 60 * 1000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 20 * 1000);
  // By default gRPC stops pinging after two pings without data, which would
  // end the watch exactly while a session sits idle.
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  // Clients ping idle connections this often; gRPC would answer GOAWAY.
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
                             kClientKeepaliveMs);
  // Connections that hold nobody's time: one that has not finished its TLS
  // and HTTP/2 handshake in 10 s (half-open, or a slowloris) is dropped, and
  // so is one with no call in flight for a minute.
  builder.AddChannelArgument(GRPC_ARG_SERVER_HANDSHAKE_TIMEOUT_MS, 10 * 1000);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_IDLE_MS, 60 * 1000);
  // A session and its Read calls; no client needs more streams on one connection.
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, 16);
  // Each open call holds a thread of the synchronous server: bounded, so a
  // flood of calls is refused (RESOURCE_EXHAUSTED) instead of exhausting the
  // process, with room for every allowed session and its reads.
  grpc::ResourceQuota quota("mycelya-server");
  quota.SetMaxThreads(4 * config.max_sessions + 16);
  builder.SetResourceQuota(quota);
  return builder.BuildAndStart();
}

int run(int argc, char** argv) {
  keep_freed_memory();
  skip_mutex_deadlock_detection();
  silence_protobuf_logging();
  route_grpc_log();
  StopSignals signals;
  signals.block();
  // Taken first: the parent may die while torch and gRPC start.
  const pid_t parent = getppid();

  ServerConfig config;
  try {
    const Flags flags = parse_flags(std::vector<std::string>(argv + 1, argv + argc));
    if (flags.help) {
      std::cout << kUsage;
      return 0;
    }
    config = configure(flags, &std::getenv, cuda_device_count());
  } catch (const FlagError& e) {
    // Bad invocations exit 2, so scripts can tell them from runtime failures
    // (1). Every start-up error is one line, for logs that keep the last one.
    log(e.what(), " (mycelya-server --help shows the flags)");
    return 2;
  }

  if (config.no_python_reason.empty()) {
    // libmycelya_python_calls.so lies beside this binary.
    config.executor.calls =
        std::make_shared<LazyPythonCalls>(embedded_python_config(folder_of_executable()));
  } else {
    config.executor.no_calls_reason = config.no_python_reason;
  }

  // Every session's Hello describes the devices: read them once, so that a
  // GPU the driver cannot describe is a start-up error, not every session's.
  try {
    for (const c10::Device& device : config.executor.devices) {
      config.executor.device_properties.push_back(
          device_properties(device, config.executor.memory_limit_bytes));
    }
  } catch (const std::exception& e) {
    log("cannot describe the devices: ", e.what());
    return 1;
  }

  ParentWatch parent_watch(parent);
  if (config.exit_with_parent) parent_watch.start();

  if (!config.state_dir.empty()) {
    // A folder that cannot be made now (a read-only home, a full disk) only
    // matters to a pause: that pause is refused then, with this reason, and
    // everything else is served.
    try {
      create_folders(config.state_dir);
    } catch (const std::exception& e) {
      log("warning: --state-dir ", config.state_dir, " is unusable (", e.what(),
          "); sessions cannot pause until it is");
    }
  }
  MycelyaService service(
      ServiceOptions{config.token, config.executor, config.max_sessions, config.state_dir});
  int port = 0;
  std::unique_ptr<grpc::Server> server;
  {
    GrpcLogCapture grpc_says;
    server = build_server(config, &service, &port);
    if (!server || port == 0) {
      const std::string why = grpc_says.text();
      log("cannot listen on ", config.listen, ": ",
          why.empty() ? "address in use, bad address or no permission" : why);
      return 1;
    }
  }

  std::string devices;
  for (size_t slot = 0; slot < config.executor.device_names.size(); ++slot) {
    devices += (devices.empty() ? "" : ", ") + config.executor.device_names[slot] + " (" +
               config.executor.device_properties[slot].name() + ")";
  }
  log("devices ", devices, "; ", config.executor.server_budget->limit(),
      " bytes of storage in all, ", config.executor.memory_limit_bytes, " per session, at most ",
      config.max_sessions, " sessions; ", config.token.empty() ? "no token" : "token required",
      "; ", config.tls_cert_pem.empty() ? "plaintext" : "TLS");
  std::cout << listening_line(bound_address(config.listen, port)) << std::endl;
  // That line is all stdout is for: whoever started the server may stop
  // reading it (a pipe nobody drains would block the server once full).
  dup2(STDERR_FILENO, STDOUT_FILENO);

  IdleWatch idle_watch(std::chrono::seconds(config.idle_timeout_seconds),
                       [&service] { return service.last_activity(); });
  if (config.idle_timeout_seconds > 0) idle_watch.start();

  signals.start();
  log(signals.wait(), ", shutting down");
  idle_watch.stop();
  // Cancels the sessions still open after the grace period; Wait returns once
  // every handler has returned, so every executor has been freed.
  server->Shutdown(std::chrono::system_clock::now() + kShutdownGrace);
  server->Wait();
  parent_watch.stop();
  signals.stop();
  log("stopped");
  return 0;
}

}  // namespace
}  // namespace mycelya

int main(int argc, char** argv) {
  const int status = mycelya::run(argc, argv);
  // Every session is over and its storages are freed. What is left is torch's
  // and gRPC's static destructors, which took about 0.1 s and release nothing
  // the kernel does not: skip them, so a client's stop() is not kept waiting.
  std::fflush(stdout);
  std::fflush(stderr);
  std::_Exit(status);
}
