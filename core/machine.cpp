// SPDX-License-Identifier: AGPL-3.0-or-later
#include "core/machine.h"

#include <c10/core/ScalarType.h>
#include <c10/util/ScopeExit.h>
#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/wire_format_lite.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>

#include "core/logging.h"
#include "core/payload_pool.h"
#include "core/plugin_loader.h"
#include "proto/storage_ids.h"

namespace mycelya {
namespace {

std::string make_machine_id(const std::string& provider) {
  static std::atomic<uint64_t> counter{0};
  char suffix[32];
  std::snprintf(suffix, sizeof(suffix), "-%d-%llu", static_cast<int>(getpid()),
                static_cast<unsigned long long>(++counter));
  return provider + suffix;
}

std::string describe(const wire::Error& error) {
  if (error.op_name().empty()) return error.message();
  return "Remote op " + error.op_name() + " failed: " + error.message();
}

// Bigger downloads stream in chunks (the stream's path is the one tuned for
// bandwidth); a read ahead of the queue is for values like loss.item().
constexpr size_t kMaxEarlyReadBytes = 1 << 20;

// Calls `visit` with every storage ID a command reads or writes.
template <typename Visit>
void for_each_storage(const wire::Command& command, const Visit& visit) {
  switch (command.kind_case()) {
    case wire::Command::kOp:
      for (const auto& arg : command.op().args()) for_each_storage_id(arg, visit);
      for (const auto& output : command.op().outputs()) {
        if (output.storage_id() != 0) visit(output.storage_id());
      }
      break;
    case wire::Command::kUpload:
      visit(command.upload().target().storage_id());
      break;
    case wire::Command::kResize:
      visit(command.resize().storage_id());
      break;
    default:
      // Frees name dead storages; seeds and generator states name none.
      break;
  }
}

size_t ref_nbytes(const wire::TensorRef& ref) {
  size_t numel = 1;
  for (const int64_t size : ref.sizes()) numel *= static_cast<size_t>(size);
  return numel * c10::elementSize(static_cast<c10::ScalarType>(ref.dtype()));
}

bool synchronous_mode() {
  const char* env = std::getenv("MYCELYA_SYNC");
  return env && *env && std::string(env) != "0";
}

}  // namespace

Machine::Machine(std::string provider, MachineSpec spec)
    : provider_(std::move(provider)),
      spec_(std::move(spec)),
      id_(make_machine_id(provider_)),
      synchronous_(synchronous_mode()) {}

Machine::~Machine() {
  try {
    stop();
  } catch (...) {
    // Destructors must not throw; a lost machine has nothing left to stop.
  }
}

void Machine::start() {
  std::lock_guard<std::mutex> submit(submit_mu_);
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    if (running_) return;
  }
  Provider& provider = load_provider(provider_);
  log_info("starting machine " + id_ + " on provider " + provider_);
  auto session = provider.start(spec_);
  auto devices = session->devices();
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    session_ = std::move(session);
    devices_ = std::move(devices);
    running_ = true;
    stopping_ = false;
    lost_.clear();
    // A new session knows no op names yet, and counts commands from 1.
    op_ids_.clear();
    commands_appended_ = 0;
    commands_flushed_ = 0;
    last_mention_.clear();
    session_reads_early_ = true;
  }
  sender_ = std::thread([this] { sender_loop(); });
}

void Machine::stop() {
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    if (!running_) return;
    stopping_ = true;
  }
  queue_cv_.notify_all();
  if (sender_.joinable()) sender_.join();
  std::lock_guard<std::mutex> submit(submit_mu_);
  std::shared_ptr<Session> session;
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    running_ = false;
    queued_.clear();
    payloads_.clear();
    frees_.clear();
    session = std::move(session_);
  }
  log_info("stopping machine " + id_);
  // A read beside the queue returns or fails once the session has stopped
  // (Session's contract); it uses this machine until then.
  const auto wait_for_reads = c10::make_scope_exit([this] {
    std::unique_lock<std::mutex> lock(queue_mu_);
    early_reads_cv_.wait(lock, [this] { return early_reads_in_flight_ == 0; });
  });
  if (session) session->stop();
}

bool Machine::running() const {
  std::lock_guard<std::mutex> lock(queue_mu_);
  return running_ && lost_.empty();
}

std::vector<std::string> Machine::devices() const {
  std::lock_guard<std::mutex> lock(queue_mu_);
  return devices_;
}

int Machine::slot_of(const std::string& type, int index) const {
  const std::string wanted = type + ":" + std::to_string(index);
  std::lock_guard<std::mutex> lock(queue_mu_);
  std::string offered;
  for (size_t i = 0; i < devices_.size(); ++i) {
    // "cpu" is served as "cpu" and also answers to "cpu:0".
    if (devices_[i] == wanted || (devices_[i] == type && index == 0)) return static_cast<int>(i);
    offered += (offered.empty() ? "" : ", ") + devices_[i];
  }
  throw std::invalid_argument("Machine " + id_ + " has no device " + wanted +
                              "; it offers: " + (offered.empty() ? "(none)" : offered) + ".");
}

uint32_t Machine::intern_op(const std::string& name, bool* first_use) {
  std::lock_guard<std::mutex> lock(queue_mu_);
  return intern_locked(name, first_use);
}

uint32_t Machine::intern_locked(const std::string& name, bool* first_use) {
  auto inserted = op_ids_.emplace(name, static_cast<uint32_t>(op_ids_.size() + 1));
  *first_use = inserted.second;
  return inserted.first->second;
}

void Machine::intern_record_locked(wire::OpRecord* record) {
  if (record->op_name().empty()) return;
  bool first_use = false;
  record->set_op_id(intern_locked(record->op_name(), &first_use));
  if (!first_use) record->clear_op_name();
}

void Machine::check_usable_locked() const {
  if (!lost_.empty()) throw std::runtime_error(lost_);
  if (!running_ || stopping_) {
    throw std::runtime_error("Machine " + id_ +
                             " is not running; call machine.start() before using its tensors.");
  }
}

void Machine::append_locked(const wire::Command& command) {
  using google::protobuf::io::CodedOutputStream;
  const size_t size = command.ByteSizeLong();
  // Field 3 (commands) of Batch, length-delimited: a tag, the length, the bytes.
  uint8_t header[1 + 10];
  uint8_t* end = CodedOutputStream::WriteTagToArray(
      google::protobuf::internal::WireFormatLite::MakeTag(
          wire::Batch::kCommandsFieldNumber,
          google::protobuf::internal::WireFormatLite::WIRETYPE_LENGTH_DELIMITED),
      header);
  end = CodedOutputStream::WriteVarint32ToArray(static_cast<uint32_t>(size), end);
  queued_.append(reinterpret_cast<const char*>(header), end - header);
  const size_t offset = queued_.size();
  queued_.resize(offset + size);
  command.SerializeWithCachedSizesToArray(reinterpret_cast<uint8_t*>(&queued_[offset]));
  const uint64_t index = ++commands_appended_;
  for_each_storage(command, [&](uint64_t id) { last_mention_[id] = index; });
}

std::optional<uint64_t> Machine::read_after_locked(const wire::Request& request) const {
  if (!session_reads_early_ || !request.has_download() ||
      ref_nbytes(request.download().source()) > kMaxEarlyReadBytes) {
    return std::nullopt;
  }
  const auto it = last_mention_.find(request.download().source().storage_id());
  return it == last_mention_.end() ? 0 : it->second;
}

void Machine::enqueue(wire::Command* command) {
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    check_usable_locked();
    if (command->has_op()) intern_record_locked(command->mutable_op());
    append_locked(*command);
  }
  queue_cv_.notify_one();
  if (synchronous_) synchronize();
}

void Machine::enqueue_upload(wire::Upload upload, std::string payload) {
  wire::Command command;
  *command.mutable_upload() = std::move(upload);
  enqueue_with_payload(std::move(command), std::move(payload));
}

void Machine::enqueue_with_payload(wire::Command command, std::string payload) {
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    check_usable_locked();
    const auto index = static_cast<uint32_t>(payloads_.size());
    if (command.has_upload()) {
      command.mutable_upload()->set_payload_index(index);
      bytes_uploaded_ += payload.size();
    } else {
      command.mutable_set_rng_state()->set_payload_index(index);
    }
    payloads_.push_back(std::move(payload));
    append_locked(command);
  }
  queue_cv_.notify_one();
  if (synchronous_) synchronize();
}

bool Machine::shares_process_generators() const {
  return session_ && session_->shares_process_generators();
}

void Machine::check_own_generators() const {
  if (!shares_process_generators()) return;
  throw std::logic_error(
      "The " + provider_ +
      " provider runs ops in this process and draws from its CPU generator, whose state "
      "torch.get_rng_state/set_rng_state already save and restore; saving it per machine "
      "(torch.mycelya.get_rng_state, fork_rng, checkpoint with preserve_rng_state=True) is "
      "not supported there. Use torch.manual_seed, or preserve_rng_state=False.");
}

std::string Machine::rng_state(int slot) {
  check_own_generators();
  wire::Request request;
  request.mutable_rng_state()->set_device(slot);
  std::string state;
  wire::Response response = this->request(std::move(request), &state);
  if (response.has_error()) {
    throw std::runtime_error("Machine " + id_ + " could not read its random generator's state: " +
                             response.error().message());
  }
  return state;
}

void Machine::set_rng_state(int slot, std::string state) {
  check_own_generators();
  wire::Command command;
  command.mutable_set_rng_state()->set_device(slot);
  command.mutable_set_rng_state()->set_nbytes(state.size());
  enqueue_with_payload(std::move(command), std::move(state));
}

void Machine::free_storage(uint64_t storage_id) {
  std::lock_guard<std::mutex> lock(queue_mu_);
  if (!running_ || !lost_.empty()) return;
  // Frees ride along with the next batch; they never wake the sender alone.
  frees_.push_back(storage_id);
  last_mention_.erase(storage_id);
}

void Machine::flush_locked() {
  EncodedBatch encoded;
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    if (queued_.empty() && frees_.empty()) return;
    if (!lost_.empty()) throw std::runtime_error(lost_);
    if (!frees_.empty()) {
      wire::Command free;
      free.mutable_free()->mutable_storage_ids()->Add(frees_.begin(), frees_.end());
      append_locked(free);
      frees_.clear();
    }
    // Fields may come in any order on the wire: the header goes after the
    // commands, so the queued bytes become the batch without a copy.
    wire::Batch header;
    header.set_version(wire::PROTOCOL_VERSION_CURRENT);
    header.set_sequence(next_sequence_++);
    encoded.batch = std::move(queued_);
    queued_.clear();
    header.AppendToString(&encoded.batch);
    encoded.payloads = std::move(payloads_);
    payloads_.clear();
    commands_flushed_ = commands_appended_;
    ++batches_sent_;
  }
  try {
    session_->submit(encoded);
    for (auto& payload : encoded.payloads) payload_pool().release(std::move(payload));
  } catch (const std::exception& e) {
    std::lock_guard<std::mutex> lock(queue_mu_);
    throw_lost_locked(e.what());
  }
}

void Machine::throw_lost_locked(const std::string& why) {
  // The first failure is the cause; a later one (another thread's call to
  // the same broken session) is its consequence.
  if (lost_.empty()) lost_ = "Machine " + id_ + " was lost: " + why;
  throw std::runtime_error(lost_);
}

void Machine::sender_loop() {
  while (true) {
    {
      std::unique_lock<std::mutex> lock(queue_mu_);
      queue_cv_.wait(lock, [this] { return stopping_ || !queued_.empty(); });
    }
    try {
      std::lock_guard<std::mutex> submit(submit_mu_);
      // Gathering only once the machine can take the batch lets the ops
      // recorded while it was busy travel in this batch, not wait for the next.
      session_->wait_until_ready();
      flush_locked();
    } catch (const std::exception& e) {
      // lost_ is set; callers see it at their next call.
      log_info(std::string("sender stopped: ") + e.what());
      return;
    }
    std::lock_guard<std::mutex> lock(queue_mu_);
    if (stopping_ && queued_.empty()) return;
  }
}

bool Machine::read_early(wire::Request& request, std::string* payload, std::string* response) {
  std::shared_ptr<Session> session;
  uint64_t after_command = 0;
  {
    std::unique_lock<std::mutex> lock(queue_mu_);
    check_usable_locked();
    const std::optional<uint64_t> read_after = read_after_locked(request);
    if (!read_after) return false;
    after_command = *read_after;
    session = session_;
    if (after_command > commands_flushed_) {
      // The source's last command is still queued: send the queue first.
      lock.unlock();
      {
        std::lock_guard<std::mutex> submit(submit_mu_);
        flush_locked();
      }
      lock.lock();
      check_usable_locked();
      // Command numbers count within one session.
      if (session != session_) {
        throw std::runtime_error("Machine " + id_ + " was restarted while a read from it waited.");
      }
    }
    // Queued commands that do not mention the source stay queued. No
    // submit_mu_ from here: the sender may ship them while this waits.
    request.set_version(wire::PROTOCOL_VERSION_CURRENT);
    request.set_sequence(next_sequence_++);
    ++early_reads_in_flight_;
  }
  bool answered = false;
  bool failed = false;
  std::string error;
  {
    // However read_after ends, stop() must learn that this read is over.
    const auto done = c10::make_scope_exit([this] {
      std::lock_guard<std::mutex> lock(queue_mu_);
      if (--early_reads_in_flight_ == 0) early_reads_cv_.notify_all();
    });
    try {
      answered = session->read_after(request.SerializeAsString(), after_command, response, payload);
    } catch (const std::exception& e) {
      failed = true;
      error = e.what();
    }
  }
  std::lock_guard<std::mutex> lock(queue_mu_);
  if (answered) {
    ++round_trips_;
    ++early_reads_;
    return true;
  }
  if (session != session_) {
    throw std::runtime_error("Machine " + id_ + " was stopped while a read from it waited.");
  }
  if (failed) throw_lost_locked(error);
  session_reads_early_ = false;  // the session cannot: every read goes in order
  return false;
}

wire::Response Machine::request(wire::Request request, std::string* payload) {
  std::string encoded_response;
  if (!read_early(request, payload, &encoded_response)) {
    std::lock_guard<std::mutex> submit(submit_mu_);
    {
      std::lock_guard<std::mutex> lock(queue_mu_);
      check_usable_locked();
    }
    flush_locked();
    std::string encoded_request;
    {
      // Numbered after the batch it must follow.
      std::lock_guard<std::mutex> lock(queue_mu_);
      request.set_version(wire::PROTOCOL_VERSION_CURRENT);
      request.set_sequence(next_sequence_++);
      ++round_trips_;
      if (request.has_execute()) intern_record_locked(request.mutable_execute()->mutable_op());
    }
    request.SerializeToString(&encoded_request);
    try {
      encoded_response = session_->request(encoded_request, payload);
    } catch (const std::exception& e) {
      std::lock_guard<std::mutex> lock(queue_mu_);
      throw_lost_locked(e.what());
    }
  }
  wire::Response response;
  if (!response.ParseFromString(encoded_response)) {
    throw std::runtime_error("Machine " + id_ + " sent a response that could not be decoded.");
  }
  if (response.has_pending_error()) throw std::runtime_error(describe(response.pending_error()));
  if (response.has_error()) throw std::runtime_error(describe(response.error()));
  return response;
}

void Machine::synchronize() {
  wire::Request sync;
  sync.mutable_sync();
  request(std::move(sync));
}

uint64_t Machine::batches_sent() const {
  std::lock_guard<std::mutex> lock(queue_mu_);
  return batches_sent_;
}

uint64_t Machine::round_trips() const {
  std::lock_guard<std::mutex> lock(queue_mu_);
  return round_trips_;
}

uint64_t Machine::early_reads() const {
  std::lock_guard<std::mutex> lock(queue_mu_);
  return early_reads_;
}

uint64_t Machine::bytes_uploaded() const {
  std::lock_guard<std::mutex> lock(queue_mu_);
  return bytes_uploaded_;
}

}  // namespace mycelya
