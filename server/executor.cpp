// SPDX-License-Identifier: AGPL-3.0-or-later
#include "server/executor.h"

#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <c10/util/strides.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>

#include "proto/op_policy.h"
#include "proto/schema_types.h"
#include "proto/storage_ids.h"
#include "proto/tensor_geometry.h"
#include "server/error_text.h"
#include "server/state_folder.h"

namespace mycelya {
namespace {

// Distinct ops one session may name: ATen has a few thousand overloads.
constexpr uint32_t kMaxOpIds = 1 << 16;

std::string format_bytes(uint64_t n) {
  const char* units[] = {"bytes", "KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(n);
  int unit = 0;
  while (value >= 1024 && unit < 4) {
    value /= 1024;
    ++unit;
  }
  char text[64];
  std::snprintf(text, sizeof(text), unit == 0 ? "%.0f %s" : "%.2f %s", value, units[unit]);
  return text;
}

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

c10::IntArrayRef sizes_of(const wire::TensorRef& ref) {
  return c10::IntArrayRef(ref.sizes().data(), ref.sizes_size());
}

c10::IntArrayRef strides_of(const wire::TensorRef& ref) {
  return c10::IntArrayRef(ref.strides().data(), ref.strides_size());
}

// Whether a view lays its elements out one after another, as a contiguous
// tensor does (dimensions of size 1 may have any stride).
bool is_row_major(const wire::TensorRef& ref) {
  const auto expected = c10::contiguous_strides(sizes_of(ref));
  for (int d = 0; d < ref.sizes_size(); ++d) {
    if (ref.sizes(d) != 1 && ref.strides(d) != expected[d]) return false;
  }
  return ref.sizes_size() == ref.strides_size();
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

// Bytes [from, from + count) of `storage`, as a uint8 tensor over them.
at::Tensor storage_bytes(const c10::Storage& storage, uint64_t from, uint64_t count) {
  at::Tensor bytes = at::empty({0}, at::TensorOptions().dtype(at::kByte).device(storage.device()));
  bytes.set_(storage, static_cast<int64_t>(from), {static_cast<int64_t>(count)}, {1});
  return bytes;
}

// A paused storage crosses between a device and its file this many bytes at a time.
constexpr uint64_t kStateChunkBytes = 64 << 20;
// Paused sessions one server keeps on its disk at most.
constexpr uint64_t kMaxPausedSessions = 1024;
// StateReport.commands_run of a session that lost count (an undecodable batch).
constexpr uint64_t kCommandsUncounted = UINT64_MAX;

// Sets the bytes of `storage` from byte `from` on to zero.
void zero_bytes(const c10::Storage& storage, uint64_t from) {
  if (from < storage.nbytes()) storage_bytes(storage, from, storage.nbytes() - from).zero_();
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

Executor::Executor(ExecutorOptions options)
    : options_(std::move(options)), generators_(options_.devices) {
  if (options_.memory_limit_bytes == 0) options_.memory_limit_bytes = default_memory_limit();
  budget_ = options_.server_budget ? options_.server_budget
                                   : std::make_shared<MemoryBudget>(options_.memory_limit_bytes);
}

Executor::~Executor() { budget_->release(bytes_charged_); }

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
        run_op(command.op(), /*dynamic=*/false, nullptr);
        break;
      case wire::Command::kFree:
        for (uint64_t id : command.free().storage_ids()) free(id);
        for (uint64_t id : command.free().generator_ids()) generators_.free(id);
        break;
      case wire::Command::kResize:
        resize(command.resize());
        break;
      case wire::Command::kUpload:
        upload(command.upload(), payloads);
        break;
      case wire::Command::kSeed:
        seed(command.seed());
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
      default:
        break;
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
    ops_[id] = KnownOp{std::move(handle), name, in_place, name == "aten::native_dropout"};
  }
  return *ops_[id];
}

c10::Device Executor::device_for(int slot) const {
  TORCH_CHECK(slot >= 0 && slot < static_cast<int>(options_.devices.size()), "device slot ", slot,
              " does not exist on this machine");
  return options_.devices[slot];
}

int Executor::slot_of(c10::Device device) const {
  for (size_t s = 0; s < options_.devices.size(); ++s) {
    if (options_.devices[s] == device) return static_cast<int>(s);
  }
  TORCH_CHECK(false, "a kernel returned a tensor on ", device,
              ", which this machine does not serve");
}

namespace {

// What `nbytes` in `storages` storages cost against the limits; saturates.
uint64_t cost_of(uint64_t nbytes, uint64_t storages) {
  uint64_t overhead = 0, cost = 0;
  if (__builtin_mul_overflow(storages, kStorageOverheadBytes, &overhead) ||
      __builtin_add_overflow(nbytes, overhead, &cost)) {
    return UINT64_MAX;
  }
  return cost;
}

}  // namespace

bool Executor::fits_session_limit(uint64_t cost) const {
  const uint64_t limit = options_.memory_limit_bytes;
  return cost <= limit && bytes_charged_ <= limit - cost;
}

void Executor::reserve_bytes(uint64_t nbytes, uint64_t storages) const {
  const uint64_t cost = cost_of(nbytes, storages);
  if (fits_session_limit(cost) && budget_->fits(cost)) return;
  out_of_memory(nbytes, cost);
}

void Executor::out_of_memory(uint64_t nbytes, uint64_t cost) const {
  const uint64_t limit = options_.memory_limit_bytes;
  TORCH_CHECK(fits_session_limit(cost) && options_.server_budget,
              "out of memory on the remote machine: ", format_bytes(nbytes), " requested, ",
              format_bytes(bytes_in_use_), " in use, limit ", format_bytes(limit),
              ". Free tensors you no longer need or use a bigger machine.");
  TORCH_CHECK(false, "out of memory on the remote machine: ", format_bytes(nbytes),
              " requested; this session holds ", format_bytes(bytes_in_use_), " of its limit of ",
              format_bytes(limit), ", and the server's sessions together hold ",
              format_bytes(budget_->used()), " of its ", format_bytes(budget_->limit()),
              ". Free tensors you no longer need, wait for other sessions to end, or use a bigger "
              "machine.");
}

c10::Storage Executor::new_storage(uint64_t nbytes, c10::Device device, bool zeroed) {
  reserve_bytes(nbytes);
  c10::DeviceGuard guard(device);
  c10::Storage storage(c10::Storage::use_byte_size_t(), nbytes, c10::GetAllocator(device.type()),
                       /*resizable=*/true);
  // Freed memory comes back from the allocator as it was left, possibly by
  // another session: a storage is never handed out with those bytes.
  if (zeroed) zero_bytes(storage, 0);
  return storage;
}

void Executor::keep(uint64_t id, c10::Storage storage) {
  auto it = storages_.find(id);
  const bool known = it != storages_.end();
  const uint64_t old_bytes = known ? it->second.counted_bytes : 0;
  const uint64_t new_bytes = storage.nbytes();
  const uint64_t old_cost = known ? cost_of(old_bytes, 1) : 0;
  const uint64_t new_cost = cost_of(new_bytes, 1);
  TORCH_CHECK(known || storages_.size() < options_.max_storages, "this session holds ",
              storages_.size(),
              " storages, the most a session may hold on this server; free "
              "tensors you no longer need");
  if (new_cost > old_cost) {
    const uint64_t growth = new_cost - old_cost;
    if (!fits_session_limit(growth) || !budget_->try_charge(growth)) {
      // Nothing stays under the ID: a storage a kernel grew past the limit is
      // dropped (and poisoned by the failing op), not kept uncounted.
      if (known) free(id);
      out_of_memory(new_bytes - old_bytes, growth);
    }
    bytes_charged_ += growth;
  } else {
    budget_->release(old_cost - new_cost);
    bytes_charged_ -= old_cost - new_cost;
  }
  bytes_in_use_ = bytes_in_use_ - old_bytes + new_bytes;
  KeptStorage& kept = known ? it->second : storages_[id];
  kept.counted_bytes = new_bytes;
  kept.storage = std::move(storage);
}

void Executor::recharge(const std::vector<uint64_t>& ids) {
  for (uint64_t id : ids) {
    auto it = storages_.find(id);
    if (it != storages_.end() && it->second.storage.nbytes() != it->second.counted_bytes) {
      keep(id, it->second.storage);
    }
  }
}

void Executor::free(uint64_t id) {
  poison_.erase(id);
  auto it = storages_.find(id);
  if (it == storages_.end()) return;
  const uint64_t cost = cost_of(it->second.counted_bytes, 1);
  budget_->release(cost);
  bytes_charged_ -= cost;
  bytes_in_use_ -= it->second.counted_bytes;
  storages_.erase(it);
}

void Executor::check_not_poisoned(uint64_t id) const {
  auto it = poison_.find(id);
  if (it != poison_.end()) throw PoisonedStorage(it->second);
}

at::Tensor Executor::tensor_for(const wire::TensorRef& ref) {
  return tensor_for(ref, /*zero_new_storage=*/true);
}

at::Tensor Executor::tensor_to_overwrite(const wire::TensorRef& ref) {
  const uint64_t needed = required_storage_bytes(ref);  // checks the geometry first
  const bool covers_storage =
      ref.storage_offset() == 0 && is_row_major(ref) && needed == ref.storage_nbytes();
  return tensor_for(ref, /*zero_new_storage=*/!covers_storage);
}

at::Tensor Executor::tensor_for(const wire::TensorRef& ref, bool zero_new_storage) {
  const c10::Device device = device_for(ref.device());
  const c10::ScalarType dtype = ref_dtype(ref.dtype());
  const uint64_t needed = required_storage_bytes(ref);
  auto it = storages_.find(ref.storage_id());
  if (it == storages_.end()) {
    TORCH_CHECK(ref.storage_id() != 0, "storage ID 0 names no storage");
    // First use: the storage is created now, as the client's allocation promised.
    TORCH_CHECK(needed <= ref.storage_nbytes(), "a view of storage ", ref.storage_id(), " needs ",
                needed, " bytes, but the storage is to hold ", ref.storage_nbytes());
    keep(ref.storage_id(), new_storage(ref.storage_nbytes(), device, zero_new_storage));
    it = storages_.find(ref.storage_id());
  }
  const c10::Storage& storage = it->second.storage;
  TORCH_CHECK(storage.device() == device, "storage ", ref.storage_id(), " lives on ",
              storage.device(), ", not on device slot ", ref.device());
  TORCH_CHECK(needed <= storage.nbytes(), "storage ", ref.storage_id(), " holds ", storage.nbytes(),
              " bytes, too few for a view that needs ", needed);
  // Built directly, not through empty() + set_(): two dispatcher calls per
  // tensor argument were a large share of a small op's cost.
  at::Tensor tensor = at::detail::make_tensor<c10::TensorImpl>(
      c10::Storage(storage),
      c10::DispatchKeySet(c10::computeDispatchKey(dtype, c10::kStrided, storage.device())),
      c10::scalarTypeToTypeMeta(dtype));
  tensor.unsafeGetTensorImpl()->set_sizes_and_strides(sizes_of(ref), strides_of(ref),
                                                      ref.storage_offset());
  if (ref.conj()) tensor._set_conj(true);
  if (ref.neg()) tensor._set_neg(true);
  return tensor;
}

c10::IValue Executor::decode(const wire::Value& value, const c10::TypePtr& type) {
  switch (value.kind_case()) {
    case wire::Value::kNone:
    case wire::Value::KIND_NOT_SET:
      // A random kernel given no generator would draw from the process's
      // own, shared by every session: the client always names one.
      TORCH_CHECK(!is_generator_type(type),
                  "a Generator argument arrived empty; name the device's generator");
      return c10::IValue();
    case wire::Value::kTensor:
      return tensor_for(value.tensor());
    case wire::Value::kIntValue:
      return value.int_value();
    case wire::Value::kDoubleValue:
      return value.double_value();
    case wire::Value::kBoolValue:
      return value.bool_value();
    case wire::Value::kComplexValue:
      return c10::complex<double>(value.complex_value().real(), value.complex_value().imag());
    case wire::Value::kStringValue:
      return value.string_value();
    case wire::Value::kIntList:
      return c10::List<int64_t>(
          std::vector<int64_t>(value.int_list().values().begin(), value.int_list().values().end()));
    case wire::Value::kDoubleList:
      return c10::List<double>(std::vector<double>(value.double_list().values().begin(),
                                                   value.double_list().values().end()));
    case wire::Value::kBoolList: {
      c10::List<bool> list;
      for (bool b : value.bool_list().values()) list.push_back(b);
      return list;
    }
    case wire::Value::kDevice:
      return device_for(value.device());
    case wire::Value::kGenerator:
      return generators_.get(value.generator());
    case wire::Value::kCpuScalar: {
      const auto& scalar = value.cpu_scalar();
      at::Tensor tensor = at::empty({}, at::TensorOptions().dtype(ref_dtype(scalar.dtype())));
      TORCH_CHECK(scalar.data().size() == tensor.nbytes(), "malformed CPU scalar");
      std::memcpy(tensor.data_ptr(), scalar.data().data(), scalar.data().size());
      tensor.unsafeGetTensorImpl()->set_wrapped_number(scalar.wrapped_number());
      return tensor;
    }
    case wire::Value::kList: {
      // The schema says which list type the kernel expects.
      c10::TypePtr element = type;
      if (auto optional = type->cast<c10::OptionalType>()) element = optional->getElementType();
      auto list_type = element->cast<c10::ListType>();
      const bool optional_tensors =
          list_type && list_type->getElementType()->kind() == c10::TypeKind::OptionalType;
      if (optional_tensors) {
        c10::List<std::optional<at::Tensor>> list;
        for (const auto& item : value.list().values()) {
          if (item.has_tensor()) {
            list.push_back(tensor_for(item.tensor()));
          } else if (item.has_cpu_scalar()) {
            list.push_back(decode(item, c10::TensorType::get()).toTensor());
          } else {
            list.push_back(std::nullopt);
          }
        }
        return list;
      }
      if (list_type && list_type->getElementType()->kind() == c10::TypeKind::TensorType) {
        c10::List<at::Tensor> list;
        for (const auto& item : value.list().values()) {
          list.push_back(decode(item, c10::TensorType::get()).toTensor());
        }
        return list;
      }
      // Lists of scalars arrive as typed lists; an empty generic list is an empty int list.
      TORCH_CHECK(value.list().values_size() == 0, "unsupported list argument of type ",
                  type->str());
      return c10::List<int64_t>();
    }
  }
  return c10::IValue();
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
  if (!poison_.empty()) {
    for (uint64_t id : use.read) check_not_poisoned(id);
    for (uint64_t id : use.written) check_not_poisoned(id);
  }
  // Refuse outputs beyond the memory limit before the kernel allocates them.
  uint64_t output_bytes = 0, new_storages = 0;
  for (const auto& out : record.outputs()) {
    if (out.storage_id() == 0 || storages_.count(out.storage_id())) continue;
    ++new_storages;
    if (__builtin_add_overflow(output_bytes, out.storage_nbytes(), &output_bytes)) {
      output_bytes = UINT64_MAX;  // beyond any limit
      break;
    }
  }
  reserve_bytes(output_bytes, new_storages);
}

torch::jit::Stack Executor::decode_and_call(const KnownOp& op, const wire::OpRecord& record,
                                            std::optional<ArgumentStorages>* storages) {
  const auto& arguments = op.handle.schema().arguments();
  torch::jit::Stack stack;
  stack.reserve(arguments.size());
  for (size_t i = 0; i < arguments.size(); ++i) {
    stack.push_back(decode(record.args(static_cast<int>(i)), arguments[i].type()));
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
    device_generator.set_device(slot_of(input.device()));
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
        result.sizes().equals(sizes_of(ref)) && result.strides().equals(strides_of(ref)) &&
        result.device() == device_for(ref.device()) &&
        required_storage_bytes(ref) <= ref.storage_nbytes();
    if (exact) {
      keep(ref.storage_id(), result.storage());
    } else if (result.defined() && result.sizes().equals(sizes_of(ref))) {
      tensor_for(ref).copy_(result);
    } else {
      // The kernel disagrees with the meta kernel the client planned with
      // (CPU's eval-mode batch norm returns empty saved statistics). The
      // client's tensor cannot hold this result: reading it raises, while
      // the op's other outputs, usually all the caller wants, stay good.
      poison_.emplace(ref.storage_id(),
                      c10::str(op.name, " returned output ", i, " with shape ",
                               result.defined() ? c10::str(result.sizes()) : "(none)",
                               " on the remote machine, where its meta kernel said ", sizes_of(ref),
                               "; this output cannot be used on mycelya."));
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
      describe_tensor(returned, 0, 0, info->mutable_view());
      return;
    }
    // The client's tensors carry no lazy conjugate/negative bits: new outputs hold values.
    at::Tensor t = returned.defined() ? returned.resolve_conj().resolve_neg() : returned;
    if (t.defined() && arguments.in_list_argument(t)) t = t.clone();
    TORCH_CHECK(next_id < record.outputs_size(), op.name, " returned more tensors than reserved");
    const uint64_t id = record.outputs(next_id++).storage_id();
    if (!t.defined()) return;
    TORCH_CHECK(id != 0 && !storages_.count(id), "output storage ID ", id,
                " is already in use; reserve fresh IDs for an op's results");
    describe_tensor(t, id, slot_of(t.device()), info->mutable_tensor());
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
    }
  }
  reserve_bytes(result_bytes, results.size());
  for (auto& [id, storage] : results) keep(id, std::move(storage));
}

void Executor::run_op(const wire::OpRecord& record, bool dynamic, wire::Response* response) {
  // The name for messages: the record's until the op is resolved, then the
  // one it was interned under (no string is built per op).
  const std::string* op_name = &record.op_name();
  StorageUse use;
  // A dynamic op's outputs are IDs the client reserved, used only if it
  // succeeds; a queued op's are poisoned however it fails.
  if (!dynamic) add_planned_outputs(record, &use);
  try {
    const KnownOp& op = op_for(record);
    op_name = &op.name;
    add_arguments(op, record, &use);
    check_inputs(use, record);
    std::optional<ArgumentStorages> arguments;
    const torch::jit::Stack results = decode_and_call(op, record, &arguments);
    // An out= kernel may have grown an argument's storage: count it now.
    recharge(use.written);
    if (dynamic) {
      report_dynamic_outputs(op, record, results, *arguments, response);
    } else {
      adopt_planned_outputs(op, record, results, *arguments);
    }
  } catch (const PoisonedStorage& e) {
    // An earlier failure, reported already: it only spreads.
    for (uint64_t id : use.written) poison_.emplace(id, e.what());
    if (dynamic) response->mutable_error()->set_message(e.what());
  } catch (const std::exception& e) {
    const std::string message = error_text(e);
    const std::string poison = "Remote op " + *op_name + " failed: " + message;
    for (uint64_t id : use.written) poison_.emplace(id, poison);  // the first error stays
    if (dynamic) {
      response->mutable_error()->set_op_name(*op_name);
      response->mutable_error()->set_message(message);
    } else if (!pending_error_) {
      pending_error_.emplace();
      pending_error_->set_op_name(*op_name);
      pending_error_->set_message(message);
    }
  }
}

void Executor::seed(const wire::Seed& command) {
  at::Generator generator = generators_.get(command.generator());
  std::lock_guard<std::mutex> lock(generator.mutex());
  generator.set_current_seed(command.seed());
}

void Executor::set_rng_state(const wire::SetRngState& command, PayloadSource& payloads) {
  at::Generator generator = generators_.get(command.generator());
  // A generator's state is a few KiB at most; a bigger one is not a state.
  TORCH_CHECK(command.nbytes() <= (1 << 20), "a generator state of ", command.nbytes(),
              " bytes is not one this machine gave out");
  at::Tensor state = at::empty({static_cast<int64_t>(command.nbytes())}, at::kByte);
  payloads.read(command.payload_index(), static_cast<char*>(state.data_ptr()), command.nbytes());
  std::lock_guard<std::mutex> lock(generator.mutex());
  generator.set_state(state);
}

void Executor::rng_state(const wire::GeneratorRef& ref, Payload* payload,
                         wire::Response* response) {
  at::Generator generator = generators_.get(ref);
  std::lock_guard<std::mutex> lock(generator.mutex());
  payload->bytes = generator.get_state();
  response->set_seed(generator.current_seed());
}

void Executor::upload(const wire::Upload& upload, PayloadSource& payloads) {
  // A target that fails here leaves its payload unread; the source skips it.
  const uint64_t id = upload.target().storage_id();
  const bool created = !storages_.count(id);
  at::Tensor target = tensor_to_overwrite(upload.target());
  const size_t nbytes = static_cast<size_t>(target.numel()) * target.element_size();
  try {
    if (target.is_cpu() && target.is_contiguous()) {
      // The bytes land in the storage itself.
      payloads.read(upload.payload_index(), static_cast<char*>(target.data_ptr()), nbytes);
    } else {
      at::Tensor staging =
          at::empty(target.sizes(), at::TensorOptions().dtype(target.scalar_type()));
      payloads.read(upload.payload_index(), static_cast<char*>(staging.data_ptr()), nbytes);
      target.copy_(staging);
    }
  } catch (const std::exception& e) {
    // Part of the bytes may have landed, or none on a storage made unzeroed
    // for them: the tensor cannot be read, and a new storage goes.
    if (created) free(id);
    poison_.emplace(id, std::string("the upload that should have written this tensor failed: ") +
                            error_text(e));
    throw;
  }
  // A storage written whole from the client is valid again.
  if (nbytes == target.storage().nbytes()) poison_.erase(id);
}

void Executor::resize(const wire::ResizeStorage& resize) {
  auto it = storages_.find(resize.storage_id());
  if (it == storages_.end()) return;  // not created yet: later refs carry the new size
  const c10::Device device = device_for(resize.device());
  const c10::Storage& old_storage = it->second.storage;
  TORCH_CHECK(old_storage.device() == device, "storage ", resize.storage_id(), " lives on ",
              old_storage.device(), ", not on device slot ", resize.device());
  const uint64_t old_nbytes = old_storage.nbytes();
  // The old storage is still counted: only growth needs room.
  reserve_bytes(resize.nbytes() > old_nbytes ? resize.nbytes() - old_nbytes : 0, 0);
  c10::DeviceGuard guard(device);
  c10::Storage grown(c10::Storage::use_byte_size_t(), resize.nbytes(),
                     c10::GetAllocator(device.type()), /*resizable=*/true);
  const uint64_t keep_bytes = std::min<uint64_t>(resize.nbytes(), old_nbytes);
  if (keep_bytes > 0) {
    storage_bytes(grown, 0, keep_bytes).copy_(storage_bytes(old_storage, 0, keep_bytes));
  }
  zero_bytes(grown, keep_bytes);
  keep(resize.storage_id(), std::move(grown));
}

void Executor::download(const wire::TensorRef& ref, Payload* payload) {
  check_not_poisoned(ref.storage_id());
  // A view can show a storage's bytes many times over (stride 0): what it
  // would take to send more than the storage holds must fit in memory first.
  const at::Tensor source = tensor_for(ref);
  uint64_t payload_bytes = source.element_size();
  for (int64_t size : source.sizes()) {
    if (__builtin_mul_overflow(payload_bytes, static_cast<uint64_t>(size), &payload_bytes)) {
      payload_bytes = UINT64_MAX;
      break;
    }
  }
  if (payload_bytes > source.storage().nbytes()) reserve_bytes(payload_bytes, 0);
  // A contiguous CPU view is sent as it is; the tensor keeps its storage alive.
  // The bytes of the values the tensor shows: lazy conjugate/negative bits applied.
  payload->bytes = source.resolve_conj().resolve_neg().contiguous().cpu();
  // A tensor without memory (a ZeroTensor some kernel returned) has no bytes to send.
  TORCH_CHECK(payload->bytes.numel() == 0 || payload->bytes.const_data_ptr() != nullptr, "storage ",
              ref.storage_id(), " has no memory on the remote machine");
}

std::string Executor::handle_request(const std::string& encoded, std::string* payload) {
  Payload bytes;
  std::string response = handle_request(encoded, &bytes);
  payload->assign(bytes.data(), bytes.size());
  return response;
}

c10::Device Executor::device_named(const std::string& name) const {
  std::string offered;
  for (size_t i = 0; i < options_.device_names.size(); ++i) {
    if (options_.device_names[i] == name) return options_.devices[i];
    offered += (offered.empty() ? "" : ", ") + options_.device_names[i];
  }
  TORCH_CHECK(false, "a storage was saved on ", name,
              ", which this server does not offer (it offers ", offered, ")");
}

void Executor::save_state(wire::StateReport* report) {
  TORCH_CHECK(!options_.state_dir.empty(),
              "this session cannot pause: the server keeps no state (start mycelya-server with "
              "--state-dir) or the client sent no state key");
  // A snapshot after a failed op would be taken for a good one later.
  TORCH_CHECK(!pending_error_,
              "an earlier op failed (its error comes with this response), so "
              "nothing was saved; pause again once it is handled");
  // One save at a time on this server: each checks what the others left.
  static std::mutex saving;
  std::lock_guard<std::mutex> one_at_a_time(saving);
  StateFolder folder(options_.state_dir);
  // Paused sessions keep at most the server's memory budget, in at most
  // kMaxPausedSessions folders, on its disk, so sessions that save and never
  // come back cannot fill it.
  const StateFolder::Usage beside = folder.usage_beside();
  TORCH_CHECK(beside.folders < kMaxPausedSessions, "cannot pause: the server already keeps ",
              beside.folders, " paused sessions, its most; resume or stop some of them first");
  TORCH_CHECK(beside.bytes <= budget_->limit() && bytes_charged_ <= budget_->limit() - beside.bytes,
              "cannot pause: the server's state folder already holds ", beside.bytes,
              " bytes of other paused sessions, and this one's ", bytes_charged_,
              " bytes would take it past the server's memory budget (", budget_->limit(),
              " bytes); resume or stop the other paused machines first");
  // Poisoned IDs go in the manifest but not on disk: a restore then poisons
  // them again rather than bring back bytes no op finished writing.
  std::vector<uint64_t> ids;
  for (const auto& entry : storages_) ids.push_back(entry.first);
  for (const auto& entry : poison_) {
    if (!storages_.count(entry.first)) ids.push_back(entry.first);
  }
  std::sort(ids.begin(), ids.end());
  try {
    folder.begin_save(ids, commands_counted_ ? commands_run_ : kCommandsUncounted);
    uint64_t bytes = 0;
    for (const uint64_t id : ids) {
      const auto it = storages_.find(id);
      if (it == storages_.end() || poison_.count(id)) continue;
      const c10::Storage& storage = it->second.storage;
      const uint64_t nbytes = storage.nbytes();
      const std::string& device = options_.device_names[slot_of(storage.device())];
      folder.write_storage(id, device, nbytes, [&](const StateFolder::ByteSink& write) {
        if (storage.device().is_cpu()) {
          write(static_cast<const char*>(storage.data()), nbytes);
          return;
        }
        // A device's bytes come through the host a piece at a time.
        for (uint64_t from = 0; from < nbytes; from += kStateChunkBytes) {
          const uint64_t count = std::min<uint64_t>(kStateChunkBytes, nbytes - from);
          const at::Tensor host = storage_bytes(storage, from, count).cpu();
          write(static_cast<const char*>(host.const_data_ptr()), count);
        }
      });
      report->add_storage_ids(id);
      bytes += nbytes;
    }
    folder.end_save();
    report->set_bytes(bytes);
    report->set_commands_run(commands_counted_ ? commands_run_ : kCommandsUncounted);
  } catch (...) {
    // Half a save (the disk full, say) is no snapshot: nothing stays.
    folder.clear();
    throw;
  }
}

void Executor::restore_state(wire::StateReport* report) {
  TORCH_CHECK(!options_.state_dir.empty(),
              "this session cannot resume: the server keeps no state (start mycelya-server with "
              "--state-dir) or the client sent no state key");
  StateFolder folder(options_.state_dir);
  const StateFolder::Contents contents = folder.list();
  TORCH_CHECK(contents.saved,
              "nothing was saved for this machine on this server (its state folder holds no "
              "manifest): its storages are gone");
  uint64_t bytes = 0;
  for (const StateFolder::Saved& saved : contents.storages) {
    TORCH_CHECK(!storages_.count(saved.id) && !poison_.count(saved.id), "storage ", saved.id,
                " is in use already; a restore must come before anything else in a session");
    const c10::Device device = device_named(saved.device);
    c10::Storage storage = new_storage(saved.nbytes, device, /*zeroed=*/false);
    uint64_t from = 0;
    folder.read_storage(saved, kStateChunkBytes, [&](const char* data, size_t n) {
      if (device.is_cpu()) {
        std::memcpy(static_cast<char*>(storage.mutable_data()) + from, data, n);
      } else {
        const at::Tensor host = at::from_blob(const_cast<char*>(data), {static_cast<int64_t>(n)},
                                              at::TensorOptions().dtype(at::kByte));
        storage_bytes(storage, from, n).copy_(host);
      }
      from += n;
    });
    keep(saved.id, std::move(storage));
    report->add_storage_ids(saved.id);
    bytes += saved.nbytes;
  }
  for (const uint64_t id : contents.missing) {
    poison_[id] = "storage " + std::to_string(id) +
                  " was not saved when its machine paused (the server stopped before writing "
                  "it, or an op that should have written it had failed)";
    report->add_missing_ids(id);
  }
  report->set_bytes(bytes);
  report->set_commands_run(contents.commands_run);
  folder.clear();
}

std::string Executor::handle_request(const std::string& encoded, Payload* payload) {
  wire::Request request;
  wire::Response response;
  if (!request.ParseFromString(encoded)) {
    response.mutable_error()->set_message("the executor received a request it could not decode");
  } else {
    try {
      switch (request.kind_case()) {
        case wire::Request::kDownload:
          download(request.download().source(), payload);
          break;
        case wire::Request::kExecute:
          run_op(request.execute().op(), /*dynamic=*/true, &response);
          break;
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
          take_call_result(request.call_result().call_id(), response.mutable_call_result());
          break;
        case wire::Request::kStats: {
          wire::SessionStats* stats = response.mutable_stats();
          stats->set_storages(storages_.size());
          stats->set_bytes_in_use(bytes_in_use_);
          stats->set_generators(generators_.client_generators());
          stats->set_memory_limit(options_.memory_limit_bytes);
          break;
        }
        default:
          break;
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
