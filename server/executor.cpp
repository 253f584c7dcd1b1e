// SPDX-License-Identifier: AGPL-3.0-or-later
#include "server/executor.h"

#include <ATen/ATen.h>
#include <c10/core/CachingDeviceAllocator.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

#include "proto/op_policy.h"
#include "proto/remote_error.h"
#include "proto/storage_ids.h"
#include "proto/tensor_geometry.h"
#include "server/cuda_flash_attention.h"
#include "server/device_properties.h"
#include "server/error_text.h"
#include "server/wire_decoding.h"

namespace mycelya {
namespace {

// Distinct ops one session may name: ATen has a few thousand overloads.
constexpr uint32_t kMaxOpIds = 1 << 16;

// The container's memory limit (cgroup v2, else v1), or 0 when there is none.
uint64_t cgroup_limit() {
  for (const char* path :
       {"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"}) {
    std::ifstream file(path);
    std::string value;
    if (file >> value && value != "max") return std::strtoull(value.c_str(), nullptr, 10);
  }
  return 0;
}

// The device type of the first tensor among an op's arguments: where an op's
// stand-in for that device type runs instead of kernels it lacks.
std::optional<c10::DeviceType> first_tensor_device_type(const torch::jit::Stack& stack) {
  for (const c10::IValue& value : stack) {
    if (value.isTensor() && value.toTensor().defined()) return value.toTensor().device().type();
  }
  return std::nullopt;
}

// The kind of a command or request this executor does not know, for its
// error: the field number a newer client set, or none at all.
std::string kind_text(const google::protobuf::Message& message) {
  const auto& unknown = message.GetReflection()->GetUnknownFields(message);
  if (unknown.field_count() == 0) return "no kind (kind 0)";
  return "kind " + std::to_string(unknown.field(0).number());
}

// Returned tensors in order, lists flattened (as the client numbers outputs).
std::vector<at::Tensor> flatten_tensors(const torch::jit::Stack& results) {
  std::vector<at::Tensor> tensors;
  for (const auto& result : results) {
    if (result.isTensor()) {
      tensors.push_back(result.toTensor());
    } else if (result.isTensorList()) {
      for (const at::Tensor& t : result.toTensorVector()) tensors.push_back(t);
    }
  }
  return tensors;
}

}  // namespace

uint64_t default_memory_limit() {
  if (const char* env = std::getenv("MYCELYA_MEMORY_LIMIT")) {
    return std::strtoull(env, nullptr, 10);
  }
  uint64_t physical =
      static_cast<uint64_t>(sysconf(_SC_PHYS_PAGES)) * static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  const uint64_t cgroup = cgroup_limit();
  if (cgroup > 0 && cgroup < physical) physical = cgroup;
  return physical / 2;
}

namespace {

ExecutorOptions with_defaults(ExecutorOptions options) {
  if (options.memory_limit_bytes == 0) options.memory_limit_bytes = default_memory_limit();
  for (size_t slot = options.device_properties.size(); slot < options.devices.size(); ++slot) {
    options.device_properties.push_back(
        device_properties(options.devices[slot], options.memory_limit_bytes));
  }
  return options;
}

}  // namespace

Executor::Executor(ExecutorOptions options)
    : options_(with_defaults(std::move(options))),
      storages_(options_.memory_limit_bytes, options_.server_budget, options_.max_storages),
      generators_(options_.devices) {}

Executor::~Executor() = default;

std::vector<std::string> Executor::encoded_device_properties() const {
  std::vector<std::string> encoded;
  for (const wire::DeviceProperties& properties : options_.device_properties) {
    encoded.push_back(properties.SerializeAsString());
  }
  return encoded;
}

namespace {

class PayloadsInMemory final : public PayloadSource {
 public:
  explicit PayloadsInMemory(const std::vector<std::string>& payloads) : payloads_(payloads) {}
  void read(uint32_t index, char* dst, size_t size) override {
    TORCH_CHECK(index < payloads_.size(), "upload names a missing payload");
    TORCH_CHECK(payloads_[index].size() == size, "upload of ", size, " bytes carries ",
                payloads_[index].size(), " bytes");
    // An empty payload may go to an empty tensor, whose data pointer is null.
    if (size > 0) std::memcpy(dst, payloads_[index].data(), size);
  }

 private:
  const std::vector<std::string>& payloads_;
};

}  // namespace

void Executor::run_batch(const std::string& encoded, const std::vector<std::string>& payloads) {
  PayloadsInMemory source(payloads);
  run_batch(encoded, source);
}

void Executor::run_batch(const std::string& encoded, PayloadSource& payloads) {
  wire::Batch batch;
  if (!batch.ParseFromString(encoded)) {
    if (!pending_error_) {
      pending_error_.emplace();
      pending_error_->set_message("the executor received a batch it could not decode");
    }
    commands_counted_ = false;
    return;
  }
  for (const auto& command : batch.commands()) {
    run_command(command, payloads);
    ++commands_run_;
    if (after_command_) after_command_();
  }
}

void Executor::run_command(const wire::Command& command, PayloadSource& payloads) {
  try {
    switch (command.kind_case()) {
      case wire::Command::kOp:
        run_queued_op(command.op());
        break;
      case wire::Command::kFree:
        for (uint64_t id : command.free().storage_ids()) storages_.free(id);
        for (uint64_t id : command.free().generator_ids()) generators_.free(id);
        break;
      case wire::Command::kResize:
        resize(command.resize());
        break;
      case wire::Command::kUpload:
        write_upload(command.upload(), payloads);
        break;
      case wire::Command::kSeed:
        seed_generator(command.seed());
        break;
      case wire::Command::kSetRngState:
        set_rng_state(command.set_rng_state(), payloads);
        break;
      case wire::Command::kCall:
        run_call(command.call());
        break;
      case wire::Command::kAdoptCallStorages:
        adopt_call_storages(command.adopt_call_storages());
        break;
      case wire::Command::kRecordEvent:
        events_.record(command.record_event().event_id(),
                       device_for(command.record_event().device()),
                       command.record_event().timing());
        break;
      case wire::Command::kDestroyEvent:
        events_.destroy(command.destroy_event().event_id());
        break;
      default:
        // Skipping a command would leave its outputs unwritten with no error
        // at all; the client learns of it at its next sync point instead.
        TORCH_CHECK(false, "the executor received a command of ", kind_text(command),
                    ", which it does not know (a client newer than this server, or a "
                    "malformed batch)");
    }
  } catch (const std::exception& e) {
    // Ops report their own errors; this catches uploads, resizes and the like.
    if (!pending_error_) {
      pending_error_.emplace();
      pending_error_->set_message(error_text(e));
    }
  }
}

const Executor::KnownOp& Executor::op_for(const wire::OpRecord& record) {
  const uint32_t id = record.op_id();
  TORCH_CHECK(id < kMaxOpIds, "op id ", id, " is beyond the ", kMaxOpIds, " a session may name");
  if (id >= ops_.size()) ops_.resize(id + 1);
  if (!ops_[id]) {
    TORCH_CHECK(!record.op_name().empty(), "op id ", id, " was used before it was named");
    const std::string& name = record.op_name();
    const auto dot = name.find('.');
    const std::string base = name.substr(0, dot);
    const std::string overload = dot == std::string::npos ? "" : name.substr(dot + 1);
    c10::OperatorHandle handle =
        c10::Dispatcher::singleton().findSchemaOrThrow(base.c_str(), overload.c_str());
    const std::optional<std::string> refusal = refusal_reason(handle.schema());
    TORCH_CHECK(!refusal, "refused: ", *refusal);
    const auto& arguments = handle.schema().arguments();
    const bool in_place = !arguments.empty() && arguments[0].name() == "self" &&
                          arguments[0].alias_info() && arguments[0].alias_info()->isWrite();
    const StandIn on_cpu =
        handle.hasKernelForDispatchKey(c10::DispatchKey::CPU) ? nullptr : cpu_stand_in(name);
    const StandIn on_cuda =
        handle.hasKernelForDispatchKey(c10::DispatchKey::CUDA) ? nullptr : cuda_stand_in(name);
    ops_[id] =
        KnownOp{std::move(handle), name, in_place, name == "aten::native_dropout", on_cpu, on_cuda};
  }
  return *ops_[id];
}

c10::Device Executor::device_for(int slot) const {
  TORCH_CHECK(slot >= 0 && slot < static_cast<int>(options_.devices.size()), "device slot ", slot,
              " does not exist on this machine");
  return options_.devices[slot];
}

int Executor::device_slot(c10::Device device) const {
  for (size_t s = 0; s < options_.devices.size(); ++s) {
    if (options_.devices[s] == device) return static_cast<int>(s);
  }
  TORCH_CHECK(false, "a kernel returned a tensor on ", device,
              ", which this machine does not serve");
}

Executor::ArgumentStorages::ArgumentStorages(const torch::jit::Stack& arguments) {
  for (const auto& value : arguments) {
    by_argument.push_back(value.isTensor() && value.toTensor().defined()
                              ? value.toTensor().storage().unsafeGetStorageImpl()
                              : nullptr);
    if (!value.isList()) continue;
    for (const c10::IValue& item : value.toListRef()) {
      if (item.isTensor() && item.toTensor().defined()) {
        in_lists.push_back(item.toTensor().storage().unsafeGetStorageImpl());
      }
    }
  }
}

int Executor::ArgumentStorages::input_of(const at::Tensor& t) const {
  for (size_t i = 0; i < by_argument.size(); ++i) {
    if (by_argument[i] && by_argument[i] == t.storage().unsafeGetStorageImpl()) {
      return static_cast<int>(i);
    }
  }
  return -1;
}

bool Executor::ArgumentStorages::in_list_argument(const at::Tensor& t) const {
  return std::find(in_lists.begin(), in_lists.end(), t.storage().unsafeGetStorageImpl()) !=
         in_lists.end();
}

void Executor::add_planned_outputs(const wire::OpRecord& record, StorageUse* use) {
  for (const auto& out : record.outputs()) {
    if (out.storage_id() != 0) use->written.push_back(out.storage_id());
  }
}

void Executor::add_arguments(const KnownOp& op, const wire::OpRecord& record, StorageUse* use) {
  const auto& arguments = op.handle.schema().arguments();
  TORCH_CHECK(static_cast<size_t>(record.args_size()) == arguments.size(), op.name, " expects ",
              arguments.size(), " arguments, the record has ", record.args_size());
  for (size_t i = 0; i < arguments.size(); ++i) {
    const auto& info = arguments[i].alias_info();
    std::vector<uint64_t>* ids = info && info->isWrite() ? &use->written : &use->read;
    for_each_storage_id(record.args(static_cast<int>(i)),
                        [ids](uint64_t id) { ids->push_back(id); });
  }
}

void Executor::check_inputs(const StorageUse& use, const wire::OpRecord& record) const {
  // Inputs that a failed op produced poison what is computed from them.
  if (storages_.any_poisoned()) {
    for (uint64_t id : use.read) storages_.check_not_poisoned(id);
    for (uint64_t id : use.written) storages_.check_not_poisoned(id);
  }
  // Refuse outputs beyond the memory limit before the kernel allocates them.
  uint64_t output_bytes = 0, new_storages = 0;
  for (const auto& out : record.outputs()) {
    if (out.storage_id() == 0 || storages_.contains(out.storage_id())) continue;
    ++new_storages;
    if (__builtin_add_overflow(output_bytes, out.storage_nbytes(), &output_bytes)) {
      output_bytes = UINT64_MAX;  // beyond any limit
      break;
    }
  }
  storages_.reserve(output_bytes, new_storages);
}

torch::jit::Stack Executor::decode_and_call(const KnownOp& op, const wire::OpRecord& record,
                                            std::optional<ArgumentStorages>* storages) {
  const auto& arguments = op.handle.schema().arguments();
  torch::jit::Stack stack;
  stack.reserve(arguments.size());
  for (size_t i = 0; i < arguments.size(); ++i) {
    stack.push_back(decode_value(record.args(static_cast<int>(i)), arguments[i].type()));
  }
  storages->emplace(stack);
  // An in-place op must leave its input's shape alone: the client keeps
  // shapes and does not see a kernel resize `self` (CPU's addbmm_ can).
  const bool in_place = op.in_place && stack[0].isTensor();
  const c10::DimVector self_sizes(in_place ? stack[0].toTensor().sizes() : c10::IntArrayRef());
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    if (op.native_dropout) {
      run_native_dropout(&stack);
    } else if (op.cpu_stand_in && first_tensor_device_type(stack) == c10::kCPU) {
      op.cpu_stand_in(&stack);
    } else if (op.cuda_stand_in && first_tensor_device_type(stack) == c10::kCUDA) {
      op.cuda_stand_in(&stack);
    } else {
      op.handle.callBoxed(&stack);
    }
  }
  if (in_place && !stack.empty() && stack[0].isTensor()) {
    const at::Tensor& self = stack[0].toTensor();
    TORCH_CHECK(self.sizes().equals(self_sizes), op.name, " resized its input in place from ",
                c10::IntArrayRef(self_sizes), " to ", self.sizes(),
                "; mycelya keeps the input's shape. Use the out-of-place op instead.");
  }
  return stack;
}

void Executor::run_native_dropout(torch::jit::Stack* stack) {
  // native_dropout(Tensor input, float p, bool? train) -> (Tensor, Tensor):
  // what CPU's kernel computes, drawing from the session's generator of the
  // input's device instead of the process's.
  TORCH_CHECK(stack->size() == 3 && (*stack)[0].isTensor(), "malformed native_dropout call");
  const at::Tensor input = (*stack)[0].toTensor();
  const double p = (*stack)[1].toDouble();
  const bool train = (*stack)[2].isNone() || (*stack)[2].toBool();
  at::Tensor output, mask;
  if (!train || input.numel() == 0) {
    output = input.clone();
    mask = at::ones_like(input, input.options().dtype(at::kBool));
  } else {
    const double keep = 1.0 - p;
    const double scale = keep == 0 ? 0.0 : 1.0 / keep;
    wire::GeneratorRef device_generator;
    device_generator.set_device(device_slot(input.device()));
    at::Tensor noise = at::empty_like(input).bernoulli_(keep, generators_.get(device_generator));
    output = input.mul(noise).mul_(scale);
    mask = noise.to(at::kBool);
  }
  stack->clear();
  stack->push_back(std::move(output));
  stack->push_back(std::move(mask));
}

void Executor::adopt_planned_outputs(const KnownOp& op, const wire::OpRecord& record,
                                     const torch::jit::Stack& stack,
                                     const ArgumentStorages& arguments) {
  // The client already decided each output's geometry; check rather than trust.
  std::vector<at::Tensor> results = flatten_tensors(stack);
  TORCH_CHECK(results.size() == static_cast<size_t>(record.outputs_size()), op.name, " returned ",
              results.size(), " tensors, the client expected ", record.outputs_size());
  for (size_t i = 0; i < results.size(); ++i) {
    const auto& ref = record.outputs(static_cast<int>(i));
    if (ref.storage_id() == 0) continue;
    const at::Tensor& result = results[i];
    // A result that is a lazy conjugate/negative view (lu_solve's can be)
    // is copied out: the client's tensor has no such bits.
    const bool exact =
        result.defined() && arguments.input_of(result) < 0 && !arguments.in_list_argument(result) &&
        !result.is_conj() && !result.is_neg() && result.storage_offset() == ref.storage_offset() &&
        result.storage().nbytes() == ref.storage_nbytes() &&
        static_cast<int32_t>(result.scalar_type()) == ref.dtype() &&
        result.sizes().equals(ref_sizes(ref)) && result.strides().equals(ref_strides(ref)) &&
        result.device() == device_for(ref.device()) &&
        required_storage_bytes(ref) <= ref.storage_nbytes();
    if (exact) {
      storages_.keep(ref.storage_id(), result.storage());
    } else if (result.defined() && result.sizes().equals(ref_sizes(ref))) {
      tensor_for(ref).copy_(result);
    } else {
      // The kernel disagrees with the meta kernel the client planned with
      // (CPU's eval-mode batch norm returns empty saved statistics). The
      // client's tensor cannot hold this result: reading it raises, while
      // the op's other outputs, usually all the caller wants, stay good.
      storages_.poison(ref.storage_id(),
                       c10::str(op.name, " returned output ", i, " with shape ",
                                result.defined() ? c10::str(result.sizes()) : "(none)",
                                " on the remote machine, where its meta kernel said ",
                                ref_sizes(ref), "; this output cannot be used on mycelya."));
    }
  }
}

void Executor::report_dynamic_outputs(const KnownOp& op, const wire::OpRecord& record,
                                      const torch::jit::Stack& stack,
                                      const ArgumentStorages& arguments, wire::Response* response) {
  // Results go under the IDs the client reserved, in order; they are kept
  // only once every one is checked, so a failure leaves none behind.
  int next_id = 0;
  std::vector<std::pair<uint64_t, c10::Storage>> results;
  uint64_t result_bytes = 0;
  auto report_tensor = [&](const at::Tensor& returned, wire::OutputInfo* info) {
    const int input = returned.defined() ? arguments.input_of(returned) : -1;
    if (input >= 0) {
      info->set_input_index(input);
      write_tensor_ref(returned, 0, 0, info->mutable_view());
      return;
    }
    // The client's tensors carry no lazy conjugate/negative bits: new outputs hold values.
    at::Tensor t = returned.defined() ? returned.resolve_conj().resolve_neg() : returned;
    if (t.defined() && arguments.in_list_argument(t)) t = t.clone();
    TORCH_CHECK(next_id < record.outputs_size(), op.name, " returned more tensors than reserved");
    const uint64_t id = record.outputs(next_id++).storage_id();
    if (!t.defined()) return;
    TORCH_CHECK(id != 0 && !storages_.contains(id), "output storage ID ", id,
                " is already in use; reserve fresh IDs for an op's results");
    write_tensor_ref(t, id, device_slot(t.device()), info->mutable_tensor());
    result_bytes += t.storage().nbytes();
    results.emplace_back(id, t.storage());
  };
  for (const auto& result : stack) {
    auto* info = response->add_outputs();
    if (result.isTensor()) {
      report_tensor(result.toTensor(), info);
    } else if (result.isTensorList()) {
      for (const at::Tensor& t : result.toTensorVector()) {
        report_tensor(t, info->mutable_list()->add_items());
      }
    } else if (result.isBool()) {
      info->mutable_value()->set_bool_value(result.toBool());
    } else if (result.isInt()) {
      info->mutable_value()->set_int_value(result.toInt());
    } else if (result.isDouble()) {
      info->mutable_value()->set_double_value(result.toDouble());
    } else {
      // The client reads an empty OutputInfo as None; anything else left
      // empty would reach it as a None it never returned.
      TORCH_CHECK(result.isNone(), op.name, " returned a ", result.tagKind(),
                  ", which a machine cannot send back (only tensors, tensor lists, bools, ints, "
                  "floats and None)");
    }
  }
  storages_.reserve(result_bytes, results.size());
  for (auto& [id, storage] : results) storages_.keep(id, std::move(storage));
}

void Executor::call_op(const wire::OpRecord& record, StorageUse* use, const std::string** op_name,
                       OpCall* call) {
  call->op = &op_for(record);
  *op_name = &call->op->name;
  add_arguments(*call->op, record, use);
  check_inputs(*use, record);
  call->results = decode_and_call(*call->op, record, &call->arguments);
  // An out= kernel may have grown an argument's storage: count it now.
  storages_.recharge(use->written);
}

void Executor::run_queued_op(const wire::OpRecord& record) {
  // The name for messages: the record's until the op is resolved, then the
  // one it was interned under (no string is built per op).
  const std::string* op_name = &record.op_name();
  StorageUse use;
  // The outputs the client planned are poisoned however the op fails.
  add_planned_outputs(record, &use);
  try {
    OpCall call;
    call_op(record, &use, &op_name, &call);
    adopt_planned_outputs(*call.op, record, call.results, *call.arguments);
  } catch (const PoisonedStorage& e) {
    // An earlier failure, reported already: it only spreads.
    storages_.poison(use.written, e.what());
  } catch (const std::exception& e) {
    const std::string message = error_text(e);
    storages_.poison(use.written, remote_op_failure(*op_name, message));
    if (!pending_error_) {
      pending_error_.emplace();
      pending_error_->set_op_name(*op_name);
      pending_error_->set_message(message);
    }
  }
}

void Executor::run_dynamic_op(const wire::OpRecord& record, wire::Response* response) {
  const std::string* op_name = &record.op_name();
  // The outputs are IDs the client reserved, used only if the op succeeds:
  // only mutated arguments are poisoned when it fails.
  StorageUse use;
  try {
    OpCall call;
    call_op(record, &use, &op_name, &call);
    report_dynamic_outputs(*call.op, record, call.results, *call.arguments, response);
  } catch (const PoisonedStorage& e) {
    storages_.poison(use.written, e.what());
    response->mutable_error()->set_message(e.what());
  } catch (const std::exception& e) {
    const std::string message = error_text(e);
    storages_.poison(use.written, remote_op_failure(*op_name, message));
    response->mutable_error()->set_op_name(*op_name);
    response->mutable_error()->set_message(message);
  }
}

std::string Executor::handle_request(const std::string& encoded, std::string* payload) {
  Payload bytes;
  std::string response = handle_request(encoded, &bytes);
  payload->assign(bytes.data(), bytes.size());
  return response;
}

bool carries_payload(const wire::Request& request) {
  return request.has_download() || request.has_rng_state();
}

void Executor::session_stats(const wire::StatsRequest& request, wire::SessionStats* stats) {
  stats->set_storages(storages_.size());
  stats->set_bytes_in_use(storages_.bytes_in_use());
  stats->set_generators(generators_.client_generators());
  stats->set_memory_limit(options_.memory_limit_bytes);
  for (size_t slot = 0; slot < options_.devices.size(); ++slot) {
    if (request.empty_cache() && options_.devices[slot].is_cuda()) {
      c10::getDeviceAllocator(c10::kCUDA)->emptyCache();
    }
    device_memory(options_.devices[slot], request.reset_peaks(), stats->add_devices());
    stats->mutable_devices()->rbegin()->set_slot(static_cast<uint32_t>(slot));
  }
  // After every device was read: on mock several slots share the CPU's counts.
  if (request.reset_peaks()) storages_.reset_peaks();
}

void Executor::device_memory(c10::Device device, bool reset_peaks, wire::DeviceMemory* memory) {
  if (device.is_cuda()) {
    // The CUDA caching allocator's own numbers, as torch.cuda reports them.
    c10::DeviceAllocator* allocator = c10::getDeviceAllocator(c10::kCUDA);
    const auto stats = allocator->getDeviceStats(device.index());
    const auto& allocated = stats.allocated_bytes[0];  // the aggregate pool
    const auto& reserved = stats.reserved_bytes[0];
    memory->set_allocated(allocated.current);
    memory->set_peak_allocated(allocated.peak);
    memory->set_allocated_total(allocated.allocated);
    memory->set_freed_total(allocated.freed);
    memory->set_reserved(reserved.current);
    memory->set_peak_reserved(reserved.peak);
    try {
      const auto [free_bytes, total_bytes] = allocator->getMemoryInfo(device.index());
      memory->set_free_memory(free_bytes);
      memory->set_total_memory(total_bytes);
    } catch (const c10::Error&) {
      // An allocator without it leaves both 0: unknown.
    }
    if (reset_peaks) allocator->resetPeakStats(device.index());
    return;
  }
  // The session's own storages there (session_stats resets their peaks):
  // nothing is cached, so reserved is allocated, and what more fits is the
  // session's limit less what it holds.
  const StorageTable::DeviceBytes bytes = storages_.device_bytes(device);
  memory->set_allocated(bytes.in_use);
  memory->set_peak_allocated(bytes.peak);
  memory->set_allocated_total(bytes.allocated);
  memory->set_freed_total(bytes.freed);
  memory->set_reserved(bytes.in_use);
  memory->set_peak_reserved(bytes.peak);
  const uint64_t limit = storages_.memory_limit();
  memory->set_free_memory(limit - std::min(limit, storages_.bytes_charged()));
  memory->set_total_memory(limit);
}

std::string Executor::handle_request(const std::string& encoded, Payload* payload) {
  wire::Request request;
  wire::Response response;
  if (!request.ParseFromString(encoded)) {
    response.mutable_error()->set_message("the executor received a request it could not decode");
  } else {
    payload->follows = carries_payload(request);
    try {
      switch (request.kind_case()) {
        case wire::Request::kDownload:
          download(request.download().source(), payload);
          break;
        case wire::Request::kExecute:
          run_dynamic_op(request.execute().op(), &response);
          break;
        case wire::Request::kSync:
          break;  // answered by the pending error alone
        case wire::Request::kRngState:
          rng_state(request.rng_state().generator(), payload, &response);
          break;
        case wire::Request::kSaveState:
          save_state(response.mutable_state());
          break;
        case wire::Request::kRestoreState:
          restore_state(response.mutable_state());
          break;
        case wire::Request::kCallResult:
          take_finished_call(request.call_result().call_id(), response.mutable_call_result());
          break;
        case wire::Request::kStats:
          session_stats(request.stats(), response.mutable_stats());
          break;
        case wire::Request::kEvent:
          if (request.event().elapsed()) {
            response.set_elapsed_ms(
                events_.elapsed_ms(request.event().event_id(), request.event().end_event_id()));
          } else {
            response.set_event_done(events_.done(request.event().event_id()));
          }
          break;
        default:
          // An empty answer would pass for a sync the client never asked for.
          TORCH_CHECK(false, "the executor received a request of ", kind_text(request),
                      ", which it does not know (a client newer than this server, or a "
                      "malformed request)");
      }
    } catch (const std::exception& e) {
      response.mutable_error()->set_message(error_text(e));
    }
  }
  if (pending_error_) {
    *response.mutable_pending_error() = std::move(*pending_error_);
    pending_error_.reset();
  }
  std::string out;
  response.SerializeToString(&out);
  return out;
}

}  // namespace mycelya
