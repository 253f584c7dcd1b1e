// SPDX-License-Identifier: AGPL-3.0-or-later
//
// The executor: keeps remote storages by client-assigned ID, rebuilds tensors
// from TensorRefs and runs op records through c10::Dispatcher.
//
// One file per concern: request dispatch and ops here (executor.cpp); the
// storages, their memory and their poisoning in StorageTable
// (storage_table.h); wire decoding (wire_decoding.cpp); uploads, downloads
// and resizes (transfers.cpp); generators (generator_commands.cpp, over
// session_generators.h); pausing (executor_state.cpp); Python functions
// (remote_calls.cpp).
//
// Errors follow CUDA's model: a failed op in a batch is remembered and
// reported by the next response. Its outputs are poisoned, and so is anything
// later computed from them, so a failure can never turn into silently wrong
// numbers: reading a poisoned tensor raises the original error again.
//
// Nothing a message says is trusted: every device slot, dtype, size, stride,
// offset and generator is checked before memory is touched, and a storage the
// executor creates starts zeroed unless the message fills it whole, so a
// session never sees bytes another session (or an earlier storage) left.
#pragma once

#include <ATen/Tensor.h>
#include <ATen/core/Generator.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <c10/core/Storage.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "proto/mycelya.pb.h"
#include "server/call_runner.h"
#include "server/cpu_rnn_cells.h"
#include "server/memory_budget.h"
#include "server/session_events.h"
#include "server/session_generators.h"
#include "server/storage_table.h"

namespace mycelya {

struct ExecutorOptions {
  // Slot i of the wire protocol is devices[i]; names are what the client sees.
  std::vector<c10::Device> devices;
  std::vector<std::string> device_names;
  // Storages beyond this many bytes are refused (an error, not the OOM killer).
  uint64_t memory_limit_bytes = 0;
  // The server's memory, shared by all its sessions; null: one of the
  // session's own, as large as memory_limit_bytes.
  std::shared_ptr<MemoryBudget> server_budget;
  // Storages one session may hold at once, whatever their size.
  uint64_t max_storages = 1 << 20;
  // The session's state folder (server/state_folder.h) for pausing; empty:
  // the session cannot pause.
  std::string state_dir;
  // Runs Python functions (wire::Call), shared by the server's sessions;
  // null: calls fail with `no_calls_reason`.
  std::shared_ptr<CallRunner> calls;
  std::string no_calls_reason = "this machine does not run Python functions";
  // What each device's Hello says of it, by slot; the executor reads the
  // devices it is not given (server/device_properties.h). mock gives its
  // emulated GPUs' here.
  std::vector<wire::DeviceProperties> device_properties;
};

// A response's bulk bytes (a download), kept as the contiguous CPU tensor they
// live in, so a transport can send them without copying them first.
struct Payload {
  at::Tensor bytes;  // undefined: no bytes
  // Whether the response comes with a payload at all (carries_payload), even
  // an empty one: a failed download still sends one, so the stream stays in step.
  bool follows = false;

  const char* data() const {
    return bytes.defined() ? static_cast<const char*>(bytes.const_data_ptr()) : nullptr;
  }
  size_t size() const { return bytes.defined() ? bytes.nbytes() : 0; }
};

// Whether the response to `request` comes with a payload (a download's
// bytes, a generator's state). The one place that decides it: the executor
// sets Payload::follows from it, and a transport sends what that says.
bool carries_payload(const wire::Request& request);

// Where a batch's upload bytes come from. Each payload is read at most once,
// in index order, straight into its destination (a network transport reads it
// off the stream as the upload runs, so it is never assembled in between).
class PayloadSource {
 public:
  virtual ~PayloadSource() = default;
  // Reads payload `index`, which must hold exactly `size` bytes, into `dst`.
  // Throws std::runtime_error when it is missing or has another size.
  virtual void read(uint32_t index, char* dst, size_t size) = 0;
};

// Half of this machine's memory (or of its cgroup limit), unless
// MYCELYA_MEMORY_LIMIT gives a number of bytes.
uint64_t default_memory_limit();

class Executor {
 public:
  explicit Executor(ExecutorOptions options);
  ~Executor();
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  const ExecutorOptions& options() const { return options_; }
  // options().device_properties, each encoded, as Session::device_properties gives them.
  std::vector<std::string> encoded_device_properties() const;

  // Runs an encoded Batch. Never throws: failures, commands of a kind the
  // executor does not know included, become the pending error.
  void run_batch(const std::string& encoded, PayloadSource& payloads);
  // The same, with the payloads in memory (mock, tests).
  void run_batch(const std::string& encoded, const std::vector<std::string>& payloads);

  // Answers an encoded Request with an encoded Response; a download's bytes
  // (or a generator's state) go to *payload. A failed request, or one of a
  // kind the executor does not know, is the response's error.
  std::string handle_request(const std::string& encoded, Payload* payload);
  // The same, with the payload copied into a string.
  std::string handle_request(const std::string& encoded, std::string* payload);

  // Commands of batches run so far, counted as the client counts them (see
  // wire::ReadRequest). Unknown from a batch that could not be decoded on.
  uint64_t commands_run() const { return commands_run_; }
  bool commands_counted() const { return commands_counted_; }
  // Called after every command of a batch, with the executor between
  // commands: the one point where a transport may serve a read early.
  void set_after_command(std::function<void()> hook) { after_command_ = std::move(hook); }

  // Bytes of the session's storages, and what they cost against the limits
  // (those bytes plus kStorageOverheadBytes per storage).
  uint64_t bytes_in_use() const { return storages_.bytes_in_use(); }
  uint64_t bytes_charged() const { return storages_.bytes_charged(); }
  size_t storage_count() const { return storages_.size(); }
  size_t client_generators() const { return generators_.client_generators(); }

  // Pausing (wire::SaveStateRequest, wire::RestoreStateRequest; defined in
  // server/executor_state.cpp): writes every storage to the state folder;
  // takes every saved storage back under its ID and poisons those the folder
  // lacks. Throw std::runtime_error.
  void save_state(wire::StateReport* report);
  void restore_state(wire::StateReport* report);

 private:
  // An op resolved once per interned id, with the name it was sent under.
  struct KnownOp {
    c10::OperatorHandle handle;
    std::string name;
    // Writes its first argument, `self` (add_): a kernel must not resize it.
    bool in_place = false;
    // aten::native_dropout has no Generator argument: its kernels would draw
    // from the process's generator, so the executor runs it with the
    // session's (run_native_dropout).
    bool native_dropout = false;
    // Ops PyTorch implements only for CUDA that the executor runs itself on
    // a tensor on the CPU (server/cpu_rnn_cells.h); nullptr for the rest.
    StandIn cpu_stand_in = nullptr;
    // Ops PyTorch implements only for the CPU that the executor runs with
    // CUDA's kernels on a GPU tensor (server/cuda_flash_attention.h).
    StandIn cuda_stand_in = nullptr;
  };
  // The storage IDs one op record reads and writes.
  struct StorageUse {
    std::vector<uint64_t> read;
    std::vector<uint64_t> written;  // outputs and mutated arguments
  };
  // The storages of one call's arguments, to tell which results are inputs.
  struct ArgumentStorages {
    std::vector<const c10::StorageImpl*> by_argument;  // null: not a tensor
    // Storages of tensors inside Tensor[] and Tensor?[] arguments: a result
    // in one of them is copied out, never kept under a second ID (the client
    // places reads by storage ID, so one storage must have one ID).
    std::vector<const c10::StorageImpl*> in_lists;

    explicit ArgumentStorages(const torch::jit::Stack& arguments);
    // The argument whose storage `t` uses, or -1.
    int input_of(const at::Tensor& t) const;
    bool in_list_argument(const at::Tensor& t) const;
  };

  void run_command(const wire::Command& command, PayloadSource& payloads);
  // The two protocols of an op record. A queued op (Command.op) writes its
  // outputs where the client planned them, and its failure becomes the
  // pending error; a dynamic op (ExecuteRequest) reports its outputs, or its
  // failure, in `response`.
  void run_queued_op(const wire::OpRecord& record);
  void run_dynamic_op(const wire::OpRecord& record, wire::Response* response);
  // The steps both share: resolves the op, checks its inputs and calls it.
  // Fills `use` as it learns what the op touches, for poisoning on failure.
  struct OpCall {
    const KnownOp* op = nullptr;
    torch::jit::Stack results;
    std::optional<ArgumentStorages> arguments;
  };
  void call_op(const wire::OpRecord& record, StorageUse* use, const std::string** op_name,
               OpCall* call);
  // The steps of the two protocols.
  static void add_planned_outputs(const wire::OpRecord& record, StorageUse* use);
  static void add_arguments(const KnownOp& op, const wire::OpRecord& record, StorageUse* use);
  void check_inputs(const StorageUse& use, const wire::OpRecord& record) const;
  torch::jit::Stack decode_and_call(const KnownOp& op, const wire::OpRecord& record,
                                    std::optional<ArgumentStorages>* arguments);
  void adopt_planned_outputs(const KnownOp& op, const wire::OpRecord& record,
                             const torch::jit::Stack& results, const ArgumentStorages& arguments);
  void report_dynamic_outputs(const KnownOp& op, const wire::OpRecord& record,
                              const torch::jit::Stack& results, const ArgumentStorages& arguments,
                              wire::Response* response);
  void run_native_dropout(torch::jit::Stack* stack);

  // Python functions (server/remote_calls.cpp): a call runs in stream
  // order, its outcome waits for a CallResultRequest, and the new storages
  // that result names wait for the client's IDs.
  void run_call(const wire::Call& call);
  void take_finished_call(uint64_t call_id, wire::CallResult* result);
  void adopt_call_storages(const wire::AdoptCallStorages& adopt);
  struct FinishedCall;
  // The slot of a device a returned tensor lives on.
  int returned_slot(const FinishedCall& call, c10::Device device) const;

  void write_upload(const wire::Upload& upload, PayloadSource& payloads);
  void resize(const wire::ResizeStorage& resize);
  void seed_generator(const wire::Seed& seed);
  void set_rng_state(const wire::SetRngState& command, PayloadSource& payloads);
  void rng_state(const wire::GeneratorRef& ref, Payload* payload, wire::Response* response);
  void download(const wire::TensorRef& ref, Payload* payload);
  void session_stats(const wire::StatsRequest& request, wire::SessionStats* stats);
  // One device's memory (wire::DeviceMemory); a GPU's peaks reset after reading.
  void device_memory(c10::Device device, bool reset_peaks, wire::DeviceMemory* memory);

  const KnownOp& op_for(const wire::OpRecord& record);
  c10::Device device_for(int slot) const;
  // The device a saved storage names, among this session's.
  c10::Device device_named(const std::string& name) const;
  // The wire slot of a device a kernel returned a tensor on.
  int device_slot(c10::Device device) const;

  // Wire decoding (server/wire_decoding.cpp).
  // The tensor a ref describes, its storage made (zeroed) on first use.
  at::Tensor tensor_for(const wire::TensorRef& ref);
  // The same for a tensor the caller writes whole, so a new storage that
  // the tensor covers exactly is not zeroed first.
  at::Tensor tensor_to_overwrite(const wire::TensorRef& ref);
  at::Tensor tensor_for(const wire::TensorRef& ref, bool zero_new_storage);
  // An argument as the schema's `type` expects it.
  c10::IValue decode_value(const wire::Value& value, const c10::TypePtr& type);

  ExecutorOptions options_;
  StorageTable storages_;
  std::vector<std::optional<KnownOp>> ops_;  // by op_id
  SessionGenerators generators_;
  SessionEvents events_;
  std::optional<wire::Error> pending_error_;
  uint64_t commands_run_ = 0;
  bool commands_counted_ = true;
  struct FinishedCall {
    CallOutcome outcome;
    std::string error;  // set when the function could not run at all
    std::vector<uint64_t> argument_ids;
    std::vector<int> argument_slots;
  };
  std::unordered_map<uint64_t, FinishedCall> finished_calls_;
  std::unordered_map<uint64_t, std::vector<c10::Storage>> awaiting_adoption_;
  uint64_t last_call_id_ = 0;
  std::function<void()> after_command_;
};

}  // namespace mycelya
