// SPDX-License-Identifier: AGPL-3.0-or-later
//
// mycelya-server: serves the executor over gRPC (see server/service.h).
//
// Whoever starts it (a provider over SSH, a container entry point, a person)
// learns the real address from the one line it prints to stdout, so it can
// listen on port 0 and never race another process for a fixed port. Logs go to
// stderr, leaving stdout to that line alone.
#include <ATen/Context.h>
#include <absl/synchronization/mutex.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <grpcpp/grpcpp.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "server/service.h"

namespace mycelya {
namespace {

constexpr char kUsage[] = R"(Usage: mycelya-server [flags]

Serves the mycelya executor over gRPC. Prints one line to stdout once it
listens, "mycelya-server listening on <address>", with the real address (the
picked port when asked for port 0); logs go to stderr. Every Session stream
gets an executor, and storages, of its own. SIGTERM or SIGINT stops it cleanly.

Flags (--flag=value or --flag value):
  --listen ADDRESS        HOST:PORT (port 0 picks a free one) or unix:/path.
                          Default 127.0.0.1:0. Addresses other machines can
                          reach require a token.
  --token-file PATH       Read the token from a file (surrounding whitespace
                          is trimmed).
  --token-env NAME        Read the token from the environment variable NAME.
                          Without either flag, MYCELYA_TOKEN is used if set.
                          Clients send "authorization: Bearer <token>".
  --devices LIST          "auto" (default: cuda:0..cuda:N-1 when torch sees
                          CUDA devices, then cpu) or a comma-separated list
                          such as "cpu" or "cuda:0,cpu". Device slot i of the
                          protocol is the i-th entry.
  --max-message-bytes N   Largest gRPC message either way (default 64 MiB).
  --memory-limit BYTES    Storage bytes each session may hold (default: half
                          of this machine's memory or cgroup limit, or
                          MYCELYA_MEMORY_LIMIT).
  --exit-with-parent      Stop (as on SIGTERM) when the parent process dies.
  --help                  Print this and exit.
)";

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

// Debian builds abseil without NDEBUG, so every absl::Mutex that gRPC locks
// also ran deadlock detection (a global lock graph): about 1.5% of the
// server's time per training step. Release builds of abseil skip it.
void skip_mutex_deadlock_detection() {
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
}

// How long in-flight calls get to finish once a stop is asked for. Sessions
// never end on their own, so this is how long stopping takes while one is open.
constexpr auto kShutdownGrace = std::chrono::seconds(1);

const char* signal_name(int signal) { return signal == SIGINT ? "SIGINT" : "SIGTERM"; }

template <typename... Parts>
void log(const Parts&... parts) {
  std::ostringstream line;
  line << "mycelya-server: ";
  (line << ... << parts);
  line << '\n';
  std::cerr << line.str() << std::flush;
}

// Bad invocations exit 2, so scripts can tell them from runtime failures (1).
[[noreturn]] void usage_error(const std::string& message) {
  std::cerr << "mycelya-server: " << message << "\nRun mycelya-server --help for usage.\n";
  std::exit(2);
}

struct Flags {
  std::string listen = "127.0.0.1:0";
  std::optional<std::string> token_file;
  std::optional<std::string> token_env;
  std::string devices = "auto";
  std::string max_message_bytes = std::to_string(64 << 20);
  std::optional<std::string> memory_limit;
  bool exit_with_parent = false;
  bool help = false;
};

Flags parse_flags(int argc, char** argv) {
  Flags flags;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind("--", 0) != 0) usage_error("unexpected argument \"" + arg + "\"");
    const size_t equals = arg.find('=');
    const std::string name =
        arg.substr(2, equals == std::string::npos ? std::string::npos : equals - 2);
    std::optional<std::string> inline_value;
    if (equals != std::string::npos) inline_value = arg.substr(equals + 1);

    if (name == "help" || name == "exit-with-parent") {
      if (inline_value) usage_error("--" + name + " takes no value");
      (name == "help" ? flags.help : flags.exit_with_parent) = true;
      continue;
    }
    std::string* target = nullptr;
    std::optional<std::string>* optional_target = nullptr;
    if (name == "listen") {
      target = &flags.listen;
    } else if (name == "devices") {
      target = &flags.devices;
    } else if (name == "max-message-bytes") {
      target = &flags.max_message_bytes;
    } else if (name == "token-file") {
      optional_target = &flags.token_file;
    } else if (name == "token-env") {
      optional_target = &flags.token_env;
    } else if (name == "memory-limit") {
      optional_target = &flags.memory_limit;
    } else {
      usage_error("unknown flag --" + name);
    }
    std::string value;
    if (inline_value) {
      value = *inline_value;
    } else {
      if (i + 1 >= argc) usage_error("--" + name + " needs a value");
      value = argv[++i];
    }
    if (target) {
      *target = value;
    } else {
      *optional_target = value;
    }
  }
  return flags;
}

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

std::string read_token(const Flags& flags) {
  if (flags.token_file && flags.token_env) {
    usage_error("give one of --token-file and --token-env, not both");
  }
  if (flags.token_file) {
    std::ifstream file(*flags.token_file, std::ios::binary);
    if (!file) usage_error("cannot read the token file " + *flags.token_file);
    std::stringstream contents;
    contents << file.rdbuf();
    const std::string token = trim(contents.str());
    if (token.empty()) usage_error("the token file " + *flags.token_file + " is empty");
    return token;
  }
  // Asked for by name, the token must be there: silently running without one
  // would let every local user in.
  if (flags.token_env) {
    const char* value = std::getenv(flags.token_env->c_str());
    const std::string token = value ? trim(value) : "";
    if (token.empty()) usage_error("the environment variable " + *flags.token_env + " is not set");
    return token;
  }
  const char* value = std::getenv("MYCELYA_TOKEN");
  return value ? trim(value) : "";
}

int cuda_device_count() {
  // hasCUDA() first: asking a CPU-only torch for the CUDA guard throws.
  if (!at::globalContext().hasCUDA()) return 0;
  return static_cast<int>(c10::impl::getDeviceGuardImpl(c10::kCUDA)->deviceCount());
}

void parse_devices(const std::string& list, ExecutorOptions* options) {
  if (list == "auto") {
    const int count = cuda_device_count();
    for (int i = 0; i < count; ++i) {
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
      if (!index) usage_error("--devices: cannot read the CUDA index in \"" + item + "\"");
      const int count = cuda_device_count();
      if (count == 0) {
        usage_error("--devices asks for " + item +
                    ", but torch sees no CUDA device on this host (a CPU-only torch, or no GPU)");
      }
      if (*index >= static_cast<uint64_t>(count)) {
        usage_error("--devices asks for " + item + ", but this host has " + std::to_string(count) +
                    " CUDA device(s)");
      }
      device.emplace(c10::kCUDA, static_cast<c10::DeviceIndex>(*index));
    } else {
      usage_error("--devices: unknown device \"" + item + "\" (use cpu, cuda or cuda:N)");
    }
    // Names are what clients see in Hello, so they are spelled one way.
    const std::string name = device->is_cuda() ? "cuda:" + std::to_string(device->index()) : "cpu";
    for (const std::string& seen : options->device_names) {
      if (seen == name) usage_error("--devices lists " + name + " twice");
    }
    options->devices.push_back(*device);
    options->device_names.push_back(name);
  }
  if (options->devices.empty()) usage_error("--devices is empty");
}

// The address to print: gRPC tells the picked port, never the whole address.
std::string bound_address(const std::string& listen, int port) {
  if (listen.rfind("unix:", 0) == 0 || listen.rfind("unix-abstract:", 0) == 0) return listen;
  const size_t colon = listen.rfind(':');
  return listen.substr(0, colon) + ":" + std::to_string(port);
}

// SIGTERM and SIGINT are blocked in every thread and taken by one thread with
// sigwait, so stopping runs as ordinary code rather than in a signal handler
// (where calling into gRPC is not allowed).
class StopSignals {
 public:
  StopSignals() {
    sigemptyset(&set_);
    sigaddset(&set_, SIGTERM);
    sigaddset(&set_, SIGINT);
  }

  // Must run before any thread starts, so every thread inherits the mask.
  void block() { pthread_sigmask(SIG_BLOCK, &set_, nullptr); }

  void start() {
    thread_ = std::thread([this] {
      while (true) {
        int signal = 0;
        if (sigwait(&set_, &signal) != 0) continue;
        std::lock_guard<std::mutex> lock(mu_);
        if (finished_) return;
        if (received_ != 0) {
          // A second signal means whoever sent it will not wait for a slow op.
          log("second ", signal_name(signal), ", exiting without waiting");
          std::_Exit(1);
        }
        received_ = signal;
        cv_.notify_all();
      }
    });
  }

  // Blocks until SIGTERM or SIGINT arrives; returns its name.
  std::string wait() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return received_ != 0; });
    return signal_name(received_);
  }

  void stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      finished_ = true;
    }
    // Wakes the sigwait; the thread sees finished_ and ends.
    pthread_kill(thread_.native_handle(), SIGTERM);
    thread_.join();
  }

 private:
  sigset_t set_;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  int received_ = 0;
  bool finished_ = false;
};

// PR_SET_PDEATHSIG acts at once but misses a parent that died before it was
// set (and is dropped across a setuid exec), so a poll of getppid() backs it
// up: once the parent dies the process is reparented and getppid() changes.
// It also follows the parent *thread*: a parent that spawns the server from a
// short-lived thread stops it when that thread ends.
class ParentWatch {
 public:
  explicit ParentWatch(pid_t parent) : parent_(parent) {}

  void start() {
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    thread_ = std::thread([this] {
      std::unique_lock<std::mutex> lock(mu_);
      while (!stopped_) {
        if (getppid() != parent_) {
          log("the parent process ", parent_, " is gone, stopping");
          kill(getpid(), SIGTERM);
          return;
        }
        cv_.wait_for(lock, std::chrono::milliseconds(200));
      }
    });
  }

  void stop() {
    if (!thread_.joinable()) return;
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopped_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

 private:
  const pid_t parent_;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopped_ = false;
};

int run(int argc, char** argv) {
  keep_freed_memory();
  skip_mutex_deadlock_detection();
  StopSignals signals;
  signals.block();
  // Taken first: the parent may die while torch and gRPC start.
  const pid_t parent = getppid();

  const Flags flags = parse_flags(argc, argv);
  if (flags.help) {
    std::cout << kUsage;
    return 0;
  }

  ParentWatch parent_watch(parent);
  if (flags.exit_with_parent) parent_watch.start();

  ServiceOptions options;
  options.token = read_token(flags);
  if (options.token.empty() && !is_local_address(flags.listen)) {
    usage_error("--listen " + flags.listen +
                " is reachable from other machines, so a token is required: use --token-file, "
                "--token-env or MYCELYA_TOKEN");
  }
  const std::optional<uint64_t> max_message = parse_count(flags.max_message_bytes);
  // Below two chunks' worth, downloads could not be sent at all.
  if (!max_message || *max_message < 2 * kPayloadChunkBytes || *max_message > INT_MAX) {
    usage_error("--max-message-bytes must be a number of bytes from " +
                std::to_string(2 * kPayloadChunkBytes) + " to " + std::to_string(INT_MAX));
  }
  if (flags.memory_limit) {
    const std::optional<uint64_t> limit = parse_count(*flags.memory_limit);
    if (!limit || *limit == 0) usage_error("--memory-limit must be a positive number of bytes");
    options.executor.memory_limit_bytes = *limit;
  } else {
    options.executor.memory_limit_bytes = default_memory_limit();
  }
  parse_devices(flags.devices, &options.executor);

  MycelyaService service(options);
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(flags.listen, grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  builder.SetMaxReceiveMessageSize(static_cast<int>(*max_message));
  builder.SetMaxSendMessageSize(static_cast<int>(*max_message));
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
  // Lets clients keep their own connections alive (through NATs that drop idle
  // flows) with pings every 10 s, where gRPC would answer them with GOAWAY.
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 10 * 1000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  // Bulk payloads: a deep receive window and big HTTP/2 frames (as the client).
  builder.AddChannelArgument(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 64 << 20);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_FRAME_SIZE, (16 << 20) - 1);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) {
    log("cannot listen on ", flags.listen, " (address in use, bad address or no permission)");
    parent_watch.stop();
    return 1;
  }

  std::string devices;
  for (const std::string& name : options.executor.device_names) {
    devices += (devices.empty() ? "" : ",") + name;
  }
  log("devices ", devices, "; ", options.executor.memory_limit_bytes,
      " bytes of storage per session; ", options.token.empty() ? "no token" : "token required");
  std::cout << "mycelya-server listening on " << bound_address(flags.listen, port) << std::endl;

  signals.start();
  const std::string why = signals.wait();
  log(why, ", shutting down");
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

int main(int argc, char** argv) { return mycelya::run(argc, argv); }
