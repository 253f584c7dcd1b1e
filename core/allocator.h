// SPDX-License-Identifier: AGPL-3.0-or-later
//
// Storage IDs. A mycelya storage holds no local bytes: its data pointer is a
// 64-bit storage ID, client-assigned, sequential and never reused in a
// process. The remote side creates the storage the first time an op names it.
// The storage also keeps the device entry it was made on (core/device_table.h),
// which tells whether its machine still runs.
#pragma once

#include <c10/core/Allocator.h>
#include <c10/core/Storage.h>

#include <cstdint>

#include "core/device_table.h"

namespace mycelya {

// The PrivateUse1 allocator: hands out an ID for the current mycelya device.
c10::Allocator* remote_allocator();

// A new, never used storage ID.
uint64_t next_storage_id();

// A DataPtr owning `id` on `entry`'s device: when it dies, the ID is freed
// remotely (unless the machine has stopped since).
c10::DataPtr make_storage_data_ptr(uint64_t id, DeviceRef entry);

// The storage ID behind a mycelya storage.
inline uint64_t storage_id(const c10::Storage& storage) {
  return reinterpret_cast<uint64_t>(storage.data_ptr().get());
}

// The device entry a mycelya storage was made on; throws c10::Error ("... is
// not running") when its machine has stopped since.
const DeviceRef& storage_device(const c10::Storage& storage);

}  // namespace mycelya
