// SPDX-License-Identifier: AGPL-3.0-or-later
//
// Host memory for tensor.pin_memory() and DataLoader(pin_memory=True) with a
// mycelya accelerator. Uploads copy host bytes into a message whatever memory
// they lie in, so "pinned" memory is ordinary CPU memory; this allocator only
// remembers which blocks it handed out, so that is_pinned() answers True for
// them as it does under CUDA (scripts and libraries check it).
#pragma once

#include <c10/core/Allocator.h>

namespace mycelya {

c10::Allocator* pinned_memory_allocator();

// Whether `ptr` lies in a live block of pinned_memory_allocator().
bool is_pinned_pointer(const void* ptr);

}  // namespace mycelya
