// SPDX-License-Identifier: AGPL-3.0-or-later
//
// The commands and requests on a session's generators (server/session_generators.h):
// seeding, and a generator's state both ways.
#include <ATen/ATen.h>

#include <mutex>

#include "server/executor.h"

namespace mycelya {

void Executor::seed_generator(const wire::Seed& command) {
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

}  // namespace mycelya
