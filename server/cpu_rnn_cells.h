// SPDX-License-Identifier: AGPL-3.0-or-later
//
// The fused RNN cells on the CPU. PyTorch's LSTM and GRU call
// _thnn_fused_lstm_cell / _thnn_fused_gru_cell (and their backwards) for
// every device that is not the CPU, mycelya's included, but implements them
// only for CUDA. A mycelya-server runs them with CUDA's kernels on a GPU;
// for a tensor on the machine's CPU (its cpu device, or a cuda device the
// mock provider emulates) it runs these instead: the same arithmetic, with
// CUDA's workspace layout, so one op per cell still crosses the wire and its
// backward finds the workspace it expects.
#pragma once

#include <ATen/core/stack.h>

#include <string>

namespace mycelya {

// A boxed kernel: the op's arguments on the stack in, its results out.
using StandIn = void (*)(torch::jit::Stack* stack);

// The CPU stand-in for `op_name` ("aten::_thnn_fused_lstm_cell"), or nullptr
// for an op that has CPU kernels of its own.
StandIn cpu_stand_in(const std::string& op_name);

}  // namespace mycelya
