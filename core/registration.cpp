// SPDX-License-Identifier: AGPL-3.0-or-later
//
// Everything the mycelya backend registers with torch, in one place and in
// the order it runs: static initializers of one file run top to bottom when
// the core library is loaded (the Python module loads it on import). The
// kernels themselves live in the files core/registration.h names.
#include "core/registration.h"

#include <ATen/native/transformers/attention.h>
#include <c10/core/Allocator.h>
#include <torch/library.h>

#include <string>

#include "core/allocator.h"

namespace mycelya {
namespace {

// The backend's name and hooks, its device guard and its allocator.
const bool backend_hooks_registered = (register_backend_hooks(), true);
const c10::impl::DeviceGuardImplRegistrar guard_registrar(c10::DeviceType::PrivateUse1,
                                                          new_guard_impl());
const c10::AllocatorRegisterer<c10::DeviceType::PrivateUse1> allocator_registerer(
    remote_allocator());

}  // namespace
}  // namespace mycelya

// Kernels of their own: everything else goes to the fallback below.
TORCH_LIBRARY_IMPL(aten, PrivateUse1, m) {
  mycelya::register_tensor_kernels(m);
  mycelya::register_copy_kernels(m);
}
// Autocast: ops neither policy names pass through untouched.
TORCH_LIBRARY_IMPL(_, AutocastPrivateUse1, m) { m.fallback(torch::CppFunction::makeFallthrough()); }
TORCH_LIBRARY_IMPL(aten, AutocastPrivateUse1, m) { mycelya::register_autocast_kernels(m); }
TORCH_LIBRARY_IMPL(aten, Meta, m) { mycelya::register_rnn_cell_meta_kernels(m); }
TORCH_LIBRARY_IMPL(aten, Conjugate, m) { mycelya::register_lazy_bit_copies(m); }
TORCH_LIBRARY_IMPL(aten, Negative, m) { mycelya::register_lazy_bit_copies(m); }

// Every other op on a mycelya tensor.
TORCH_LIBRARY_IMPL(_, PrivateUse1, m) {
  m.fallback(torch::CppFunction::makeFromBoxedFunction<&mycelya::remote_fallback>());
}

namespace at::native {
REGISTER_PRIVATEUSE1_DISPATCH(_fused_sdp_choice_stub, &mycelya::fused_sdp_choice)
}  // namespace at::native

namespace mycelya {
namespace {

torch::Library& routed_ops_library() {
  static torch::Library library(torch::Library::IMPL, "aten", c10::DispatchKey::PrivateUse1,
                                __FILE__, __LINE__);
  return library;
}

// Computed, not listed: which ATen ops get the fallback as their PrivateUse1
// kernel explicitly, because a composite kernel of theirs would otherwise win
// over the fallback (routes_to_fallback, core/fallback.cpp, says which and
// why). A scan of every op torch has registered when this library loads, so
// it follows the torch version instead of a list that would go stale. Runs
// after the kernel blocks above, and skips an op that has a kernel of its own.
void route_composite_ops_to_fallback() {
  for (const auto& name : c10::Dispatcher::singleton().getAllOpNames()) {
    if (!routes_to_fallback(name)) continue;
    const auto op = c10::Dispatcher::singleton().findOp(name);
    if (op && op->hasKernelForDispatchKey(c10::DispatchKey::PrivateUse1)) continue;
    const std::string qualified =
        name.overload_name.empty() ? name.name : name.name + "." + name.overload_name;
    routed_ops_library().impl(qualified.c_str() + 6,  // without "aten::"
                              torch::CppFunction::makeFromBoxedFunction<&remote_fallback>());
  }
}

const bool composite_ops_routed = (route_composite_ops_to_fallback(), true);

}  // namespace
}  // namespace mycelya
