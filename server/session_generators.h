// SPDX-License-Identifier: AGPL-3.0-or-later
//
// The random generators of one session: a default generator per device slot
// (GeneratorRef id 0) and those the client made (torch.Generator(device=...)),
// by the client's ids. None of them is the process's own default generator,
// so seeding one device leaves the others alone, and two sessions of one
// server never draw from each other's streams.
#pragma once

#include <ATen/core/Generator.h>
#include <c10/core/Device.h>

#include <cstddef>
#include <cstdint>
#include <unordered_map>
#include <vector>

#include "proto/mycelya.pb.h"

namespace mycelya {

// Generators a session's client may make beyond the defaults: enough for any
// program (each holds a few KiB), few enough that a client cannot exhaust the
// server's memory with them.
constexpr size_t kMaxClientGenerators = 1024;

class SessionGenerators {
 public:
  explicit SessionGenerators(std::vector<c10::Device> devices);

  // The generator `ref` names, made (with PyTorch's default seed) the first
  // time it is named. Throws c10::Error for a device slot that does not exist,
  // an id already used on another slot, or one generator too many.
  at::Generator get(const wire::GeneratorRef& ref);

  // Forgets a generator the client made; unknown ids and 0 are ignored.
  void free(uint64_t id);

  // Generators the client made and has not freed.
  size_t client_generators() const { return made_.size(); }

 private:
  at::Generator make(c10::Device device) const;
  int checked_slot(int32_t slot) const;

  const std::vector<c10::Device> devices_;
  std::vector<at::Generator> defaults_;  // by slot, made on first use
  struct Made {
    int slot;
    at::Generator generator;
  };
  std::unordered_map<uint64_t, Made> made_;
};

}  // namespace mycelya
