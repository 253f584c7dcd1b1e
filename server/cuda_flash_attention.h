// SPDX-License-Identifier: AGPL-3.0-or-later
//
// Flash attention on a GPU for a client that chose it. For a mycelya device
// whose machine's GPU would pick flash attention, the client sends what
// scaled_dot_product_attention sends on any non-CUDA device: the op pair
// _scaled_dot_product_flash_attention_for_cpu(_backward). Those have CPU
// kernels only; on a CUDA tensor the executor runs these instead: CUDA's
// flash kernels, called as CUDA's composite calls them (the head dimension
// padded to a multiple of 8), with the results laid out as the CPU ops'
// meta kernels planned them on the client.
#pragma once

#include <string>

#include "server/cpu_rnn_cells.h"

namespace mycelya {

// The CUDA stand-in for `op_name`, or nullptr for an op with CUDA kernels of its own.
StandIn cuda_stand_in(const std::string& op_name);

}  // namespace mycelya
