// SPDX-License-Identifier: AGPL-3.0-or-later
#include "server/executor.h"

#include <ATen/ATen.h>
#include <ATen/core/stack.h>
#include <c10/core/DeviceGuard.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>

#include "proto/storage_ids.h"

namespace mycelya {
namespace {

std::string error_text(const std::exception& e) {
  if (auto* c10_error = dynamic_cast<const c10::Error*>(&e))
    return c10_error->what_without_backtrace();
  return e.what();
}

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

std::vector<int64_t> to_vector(const google::protobuf::RepeatedField<int64_t>& field) {
  return {field.begin(), field.end()};
}

// Bytes a view needs from the start of its storage.
uint64_t required_bytes(const wire::TensorRef& ref) {
  int64_t last = ref.storage_offset();
  for (int d = 0; d < ref.sizes_size(); ++d) {
    if (ref.sizes(d) == 0) return 0;
    last += (ref.sizes(d) - 1) * ref.strides(d);
  }
  return static_cast<uint64_t>(last + 1) *
         c10::elementSize(static_cast<c10::ScalarType>(ref.dtype()));
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

void describe(const at::Tensor& tensor, uint64_t id, int slot, wire::TensorRef* ref) {
  ref->set_storage_id(id);
  ref->set_storage_nbytes(tensor.storage().nbytes());
  ref->mutable_sizes()->Add(tensor.sizes().begin(), tensor.sizes().end());
  ref->mutable_strides()->Add(tensor.strides().begin(), tensor.strides().end());
  ref->set_storage_offset(tensor.storage_offset());
  ref->set_dtype(static_cast<int32_t>(tensor.scalar_type()));
  ref->set_device(slot);
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

Executor::Executor(ExecutorOptions options) : options_(std::move(options)) {
  if (options_.memory_limit_bytes == 0) options_.memory_limit_bytes = default_memory_limit();
}

namespace {

class PayloadsInMemory final : public PayloadSource {
 public:
  explicit PayloadsInMemory(const std::vector<std::string>& payloads) : payloads_(payloads) {}
  void read(uint32_t index, char* dst, size_t size) override {
    TORCH_CHECK(index < payloads_.size(), "upload names a missing payload");
    TORCH_CHECK(payloads_[index].size() == size, "upload of ", size, " bytes carries ",
                payloads_[index].size(), " bytes");
    std::memcpy(dst, payloads_[index].data(), size);
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
        break;
      case wire::Command::kResize:
        resize(command.resize());
        break;
      case wire::Command::kUpload:
        upload(command.upload(), payloads);
        break;
      case wire::Command::kSeed:
        seed(command.seed().seed());
        break;
      case wire::Command::kSetRngState:
        set_rng_state(command.set_rng_state(), payloads);
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
  if (id >= ops_.size()) ops_.resize(id + 1);
  if (!ops_[id]) {
    TORCH_CHECK(!record.op_name().empty(), "op id ", id, " was used before it was named");
    const std::string& name = record.op_name();
    const auto dot = name.find('.');
    const std::string base = name.substr(0, dot);
    const std::string overload = dot == std::string::npos ? "" : name.substr(dot + 1);
    c10::OperatorHandle handle =
        c10::Dispatcher::singleton().findSchemaOrThrow(base.c_str(), overload.c_str());
    const auto& arguments = handle.schema().arguments();
    const bool in_place = !arguments.empty() && arguments[0].name() == "self" &&
                          arguments[0].alias_info() && arguments[0].alias_info()->isWrite();
    ops_[id] = KnownOp{std::move(handle), name, in_place};
  }
  return *ops_[id];
}

c10::Device Executor::device_for(int slot) const {
  TORCH_CHECK(slot >= 0 && slot < static_cast<int>(options_.devices.size()), "device slot ", slot,
              " does not exist on this machine");
  return options_.devices[slot];
}

void Executor::reserve_bytes(uint64_t nbytes) const {
  if (bytes_in_use_ + nbytes <= options_.memory_limit_bytes) return;
  TORCH_CHECK(false, "out of memory on the remote machine: ", format_bytes(nbytes), " requested, ",
              format_bytes(bytes_in_use_), " in use, limit ",
              format_bytes(options_.memory_limit_bytes),
              ". Free tensors you no longer need or use a bigger machine.");
}

c10::Storage Executor::new_storage(uint64_t nbytes, c10::Device device) {
  reserve_bytes(nbytes);
  c10::DeviceGuard guard(device);
  return c10::Storage(c10::Storage::use_byte_size_t(), nbytes, c10::GetAllocator(device.type()),
                      /*resizable=*/true);
}

void Executor::keep(uint64_t id, c10::Storage storage) {
  KeptStorage& kept = storages_[id];
  bytes_in_use_ = bytes_in_use_ - kept.counted_bytes + storage.nbytes();
  kept.counted_bytes = storage.nbytes();
  kept.storage = std::move(storage);
}

void Executor::free(uint64_t id) {
  poison_.erase(id);
  auto it = storages_.find(id);
  if (it == storages_.end()) return;
  bytes_in_use_ -= it->second.counted_bytes;
  storages_.erase(it);
}

void Executor::check_not_poisoned(uint64_t id) const {
  auto it = poison_.find(id);
  if (it != poison_.end()) throw std::runtime_error(it->second);
}

at::Tensor Executor::tensor_for(const wire::TensorRef& ref) {
  const c10::Device device = device_for(ref.device());
  auto it = storages_.find(ref.storage_id());
  if (it == storages_.end()) {
    // First use: the storage is created now, as the client's allocation promised.
    keep(ref.storage_id(), new_storage(ref.storage_nbytes(), device));
    it = storages_.find(ref.storage_id());
  }
  const c10::Storage& storage = it->second.storage;
  TORCH_CHECK(required_bytes(ref) <= storage.nbytes(), "storage ", ref.storage_id(), " holds ",
              storage.nbytes(), " bytes, too few for a view that needs ", required_bytes(ref));
  // Built directly, not through empty() + set_(): two dispatcher calls per
  // tensor argument were a large share of a small op's cost.
  const auto dtype = static_cast<c10::ScalarType>(ref.dtype());
  at::Tensor tensor = at::detail::make_tensor<c10::TensorImpl>(
      c10::Storage(storage),
      c10::DispatchKeySet(c10::computeDispatchKey(dtype, c10::kStrided, storage.device())),
      c10::scalarTypeToTypeMeta(dtype));
  tensor.unsafeGetTensorImpl()->set_sizes_and_strides(
      c10::IntArrayRef(ref.sizes().data(), ref.sizes_size()),
      c10::IntArrayRef(ref.strides().data(), ref.strides_size()), ref.storage_offset());
  if (ref.conj()) tensor._set_conj(true);
  if (ref.neg()) tensor._set_neg(true);
  return tensor;
}

c10::IValue Executor::decode(const wire::Value& value, const c10::TypePtr& type) {
  switch (value.kind_case()) {
    case wire::Value::kNone:
    case wire::Value::KIND_NOT_SET:
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
      return c10::List<int64_t>(to_vector(value.int_list().values()));
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
    case wire::Value::kCpuScalar: {
      const auto& scalar = value.cpu_scalar();
      at::Tensor tensor =
          at::empty({}, at::TensorOptions().dtype(static_cast<c10::ScalarType>(scalar.dtype())));
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

void Executor::run_op(const wire::OpRecord& record, bool dynamic, wire::Response* response) {
  // The name for messages: the record's until the op is resolved, then the
  // one it was interned under (no string is built per op).
  const std::string* op_name_ptr = &record.op_name();
  std::vector<uint64_t> written;  // storages the op writes: outputs and mutated arguments
  try {
    const KnownOp& known = op_for(record);
    op_name_ptr = &known.name;
    const std::string& op_name = known.name;
    const c10::OperatorHandle& op = known.handle;
    const auto& schema = op.schema();
    const auto& arguments = schema.arguments();
    TORCH_CHECK(static_cast<size_t>(record.args_size()) == arguments.size(), op_name, " expects ",
                arguments.size(), " arguments, the record has ", record.args_size());

    std::vector<uint64_t> read;
    for (size_t i = 0; i < arguments.size(); ++i) {
      const auto& info = arguments[i].alias_info();
      std::vector<uint64_t>* ids = info && info->isWrite() ? &written : &read;
      for_each_storage_id(record.args(static_cast<int>(i)),
                          [ids](uint64_t id) { ids->push_back(id); });
    }
    if (!dynamic) {
      for (const auto& out : record.outputs()) {
        if (out.storage_id() != 0) written.push_back(out.storage_id());
      }
    }
    // Inputs that a failed op produced poison what is computed from them.
    if (!poison_.empty()) {
      for (uint64_t id : read) check_not_poisoned(id);
      for (uint64_t id : written) check_not_poisoned(id);
    }
    // Refuse outputs beyond the memory limit before the kernel allocates them.
    uint64_t output_bytes = 0;
    for (const auto& out : record.outputs()) {
      if (out.storage_id() != 0 && !storages_.count(out.storage_id()))
        output_bytes += out.storage_nbytes();
    }
    reserve_bytes(output_bytes);

    torch::jit::Stack stack;
    stack.reserve(arguments.size());
    for (size_t i = 0; i < arguments.size(); ++i) {
      stack.push_back(decode(record.args(static_cast<int>(i)), arguments[i].type()));
    }
    std::vector<const c10::StorageImpl*> input_storages;
    // Storages of tensors inside Tensor[] and Tensor?[] arguments: a result
    // in one of them is copied out, never kept under a second ID (the client
    // places reads by storage ID, so one storage must have one ID).
    std::vector<const c10::StorageImpl*> list_storages;
    for (const auto& value : stack) {
      input_storages.push_back(value.isTensor() && value.toTensor().defined()
                                   ? value.toTensor().storage().unsafeGetStorageImpl()
                                   : nullptr);
      if (!value.isList()) continue;
      for (const c10::IValue& item : value.toListRef()) {
        if (item.isTensor() && item.toTensor().defined()) {
          list_storages.push_back(item.toTensor().storage().unsafeGetStorageImpl());
        }
      }
    }
    auto in_list_argument = [&](const at::Tensor& t) {
      return std::find(list_storages.begin(), list_storages.end(),
                       t.storage().unsafeGetStorageImpl()) != list_storages.end();
    };
    // An in-place op must leave its input's shape alone: the client keeps
    // shapes and does not see a kernel resize `self` (CPU's addbmm_ can).
    const bool in_place = known.in_place && stack[0].isTensor();
    const c10::DimVector self_sizes(in_place ? stack[0].toTensor().sizes() : c10::IntArrayRef());
    {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      op.callBoxed(&stack);
    }
    if (in_place && !stack.empty() && stack[0].isTensor()) {
      const at::Tensor& self = stack[0].toTensor();
      TORCH_CHECK(self.sizes().equals(self_sizes), op_name, " resized its input in place from ",
                  c10::IntArrayRef(self_sizes), " to ", self.sizes(),
                  "; mycelya keeps the input's shape. Use the out-of-place op instead.");
    }
    auto aliases_input = [&](const at::Tensor& t) -> int {
      for (size_t i = 0; i < input_storages.size(); ++i) {
        if (input_storages[i] && input_storages[i] == t.storage().unsafeGetStorageImpl()) {
          return static_cast<int>(i);
        }
      }
      return -1;
    };

    if (dynamic) {
      // Results go under the IDs the client reserved, in order.
      int next_id = 0;
      auto register_output = [&](const at::Tensor& returned, wire::OutputInfo* info) {
        const int input = returned.defined() ? aliases_input(returned) : -1;
        // The client's tensors carry no lazy conjugate/negative bits: new outputs hold values.
        at::Tensor t =
            returned.defined() && input < 0 ? returned.resolve_conj().resolve_neg() : returned;
        if (t.defined() && input < 0 && in_list_argument(t)) t = t.clone();
        if (input >= 0) {
          info->set_input_index(input);
          describe(t, 0, 0, info->mutable_view());
          return;
        }
        TORCH_CHECK(next_id < record.outputs_size(), op_name,
                    " returned more tensors than reserved");
        const auto& reserved = record.outputs(next_id++);
        if (!t.defined()) return;
        reserve_bytes(t.storage().nbytes());
        int slot = 0;
        for (size_t s = 0; s < options_.devices.size(); ++s) {
          if (options_.devices[s] == t.device()) slot = static_cast<int>(s);
        }
        keep(reserved.storage_id(), t.storage());
        describe(t, reserved.storage_id(), slot, info->mutable_tensor());
      };
      for (const auto& result : stack) {
        auto* info = response->add_outputs();
        if (result.isTensor()) {
          register_output(result.toTensor(), info);
        } else if (result.isTensorList()) {
          for (const at::Tensor& t : result.toTensorVector())
            register_output(t, info->mutable_list()->add_items());
        } else if (result.isBool()) {
          info->mutable_value()->set_bool_value(result.toBool());
        } else if (result.isInt()) {
          info->mutable_value()->set_int_value(result.toInt());
        } else if (result.isDouble()) {
          info->mutable_value()->set_double_value(result.toDouble());
        }
      }
      return;
    }

    // Queued op: the client already decided each output's geometry; check rather than trust.
    std::vector<at::Tensor> results = flatten_tensors(stack);
    TORCH_CHECK(results.size() == static_cast<size_t>(record.outputs_size()), op_name, " returned ",
                results.size(), " tensors, the client expected ", record.outputs_size());
    for (size_t i = 0; i < results.size(); ++i) {
      const auto& ref = record.outputs(static_cast<int>(i));
      if (ref.storage_id() == 0) continue;
      const at::Tensor& result = results[i];
      // A result that is a lazy conjugate/negative view (lu_solve's can be)
      // is copied out: the client's tensor has no such bits.
      const bool exact = result.defined() && aliases_input(result) < 0 &&
                         !in_list_argument(result) && !result.is_conj() && !result.is_neg() &&
                         result.storage_offset() == ref.storage_offset() &&
                         result.storage().nbytes() == ref.storage_nbytes() &&
                         static_cast<int32_t>(result.scalar_type()) == ref.dtype() &&
                         result.sizes().equals(to_vector(ref.sizes())) &&
                         result.strides().equals(to_vector(ref.strides())) &&
                         result.device() == device_for(ref.device());
      if (exact) {
        keep(ref.storage_id(), result.storage());
      } else if (result.defined() && result.sizes().equals(to_vector(ref.sizes()))) {
        at::Tensor target = tensor_for(ref);
        target.copy_(result);
      } else {
        // The kernel disagrees with the meta kernel the client planned with
        // (CPU's eval-mode batch norm returns empty saved statistics). The
        // client's tensor cannot hold this result: reading it raises, while
        // the op's other outputs, usually all the caller wants, stay good.
        poison_.emplace(ref.storage_id(),
                        c10::str(op_name, " returned output ", i, " with shape ",
                                 result.defined() ? c10::str(result.sizes()) : "(none)",
                                 " on the remote machine, where its meta kernel said ",
                                 c10::IntArrayRef(to_vector(ref.sizes())),
                                 "; this output cannot be used on mycelya."));
      }
    }
  } catch (const std::exception& e) {
    const std::string& op_name = *op_name_ptr;
    std::string message = error_text(e);
    const std::string poison = "Remote op " + op_name + " failed: " + message;
    for (uint64_t id : written) poison_.emplace(id, poison);  // the first error stays
    if (dynamic) {
      response->mutable_error()->set_op_name(op_name);
      response->mutable_error()->set_message(message);
      return;
    }
    if (!pending_error_ && message.rfind("Remote op ", 0) != 0) {
      pending_error_.emplace();
      pending_error_->set_op_name(op_name);
      pending_error_->set_message(message);
    }
  }
}

at::Generator Executor::generator_for(int slot) const {
  return at::globalContext().defaultGenerator(device_for(slot));
}

void Executor::set_rng_state(const wire::SetRngState& command, PayloadSource& payloads) {
  at::Tensor state = at::empty({static_cast<int64_t>(command.nbytes())}, at::kByte);
  payloads.read(command.payload_index(), static_cast<char*>(state.data_ptr()), command.nbytes());
  at::Generator generator = generator_for(command.device());
  std::lock_guard<std::mutex> lock(generator.mutex());
  generator.set_state(state);
}

void Executor::seed(uint64_t seed) {
  // Only the generators of the devices served here: at::manual_seed would also
  // reach a mycelya client's generators when the executor runs in-process.
  for (const c10::Device& device : options_.devices) {
    at::Generator generator = at::globalContext().defaultGenerator(device);
    std::lock_guard<std::mutex> lock(generator.mutex());
    generator.set_current_seed(seed);
  }
}

void Executor::upload(const wire::Upload& upload, PayloadSource& payloads) {
  // A target that fails here leaves its payload unread; the source skips it.
  at::Tensor target = tensor_for(upload.target());
  const size_t nbytes = static_cast<size_t>(target.numel()) * target.element_size();
  if (target.is_cpu() && target.is_contiguous()) {
    // The bytes land in the storage itself.
    payloads.read(upload.payload_index(), static_cast<char*>(target.data_ptr()), nbytes);
  } else {
    at::Tensor staging = at::empty(target.sizes(), at::TensorOptions().dtype(target.scalar_type()));
    payloads.read(upload.payload_index(), static_cast<char*>(staging.data_ptr()), nbytes);
    target.copy_(staging);
  }
  // A storage written whole from the client is valid again.
  if (nbytes == target.storage().nbytes()) poison_.erase(upload.target().storage_id());
}

void Executor::resize(const wire::ResizeStorage& resize) {
  auto it = storages_.find(resize.storage_id());
  if (it == storages_.end()) return;  // not created yet: later refs carry the new size
  const c10::Storage& old_storage = it->second.storage;
  const uint64_t old_nbytes = old_storage.nbytes();
  // The old storage is still counted: only growth needs room.
  reserve_bytes(resize.nbytes() > old_nbytes ? resize.nbytes() - old_nbytes : 0);
  const c10::Device device = device_for(resize.device());
  c10::DeviceGuard guard(device);
  c10::Storage grown(c10::Storage::use_byte_size_t(), resize.nbytes(),
                     c10::GetAllocator(device.type()), /*resizable=*/true);
  const int64_t keep_bytes = static_cast<int64_t>(std::min<uint64_t>(resize.nbytes(), old_nbytes));
  if (keep_bytes > 0) {
    auto bytes_of = [&](const c10::Storage& storage) {
      at::Tensor t = at::empty({0}, at::TensorOptions().dtype(at::kByte).device(storage.device()));
      t.set_(storage, 0, {keep_bytes}, {1});
      return t;
    };
    bytes_of(grown).copy_(bytes_of(old_storage));
  }
  keep(resize.storage_id(), std::move(grown));
}

void Executor::download(const wire::TensorRef& ref, Payload* payload) {
  check_not_poisoned(ref.storage_id());
  // A contiguous CPU view is sent as it is; the tensor keeps its storage alive.
  // The bytes of the values the tensor shows: lazy conjugate/negative bits applied.
  payload->bytes = tensor_for(ref).resolve_conj().resolve_neg().contiguous().cpu();
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

std::string Executor::handle_request(const std::string& encoded, Payload* payload) {
  wire::Request request;
  wire::Response response;
  response.set_version(wire::PROTOCOL_VERSION_CURRENT);
  if (!request.ParseFromString(encoded)) {
    response.mutable_error()->set_message("the executor received a request it could not decode");
  } else {
    response.set_sequence(request.sequence());
    try {
      switch (request.kind_case()) {
        case wire::Request::kDownload:
          download(request.download().source(), payload);
          break;
        case wire::Request::kExecute:
          run_op(request.execute().op(), /*dynamic=*/true, &response);
          break;
        case wire::Request::kRngState: {
          at::Generator generator = generator_for(request.rng_state().device());
          std::lock_guard<std::mutex> lock(generator.mutex());
          payload->bytes = generator.get_state();
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
