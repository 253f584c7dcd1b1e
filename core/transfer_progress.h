// SPDX-License-Identifier: AGPL-3.0-or-later
//
// Progress of large copies between the CPU and a machine. With a reporter
// set (the Python package sets a tqdm bar where progress shows), a copy of
// at least kProgressMinBytes travels in pieces and reports each: an upload in
// pieces of kUploadPieceBytes, each queued once the queue has room (its bound
// paces them with the link), a download in at most kMaxDownloadPieces round
// trips. Without a reporter a copy is one piece, as before.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace mycelya {

constexpr uint64_t kProgressMinBytes = 64ull << 20;
constexpr uint64_t kUploadPieceBytes = 16ull << 20;
constexpr uint64_t kMaxDownloadPieces = 16;

// Called with done == 0 first and done == total last; `label` names one copy
// ("upload of 256.0 MiB to mycelya:0").
using ProgressReporter =
    std::function<void(const std::string& label, uint64_t done, uint64_t total)>;

void set_progress_reporter(ProgressReporter reporter);

// The reporter for a copy of `nbytes`, or an empty function when none shows.
ProgressReporter progress_reporter_for(uint64_t nbytes);

// The byte ranges a copy of `nbytes` travels in: [start, end) pieces.
std::vector<std::pair<uint64_t, uint64_t>> transfer_pieces(uint64_t nbytes, uint64_t piece_bytes);

}  // namespace mycelya
