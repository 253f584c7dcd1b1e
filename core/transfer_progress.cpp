// SPDX-License-Identifier: AGPL-3.0-or-later
#include "core/transfer_progress.h"

#include <algorithm>
#include <mutex>
#include <utility>
#include <vector>

namespace mycelya {

namespace {

std::mutex& reporter_mu() {
  static std::mutex mu;
  return mu;
}

ProgressReporter& reporter() {
  static ProgressReporter current;
  return current;
}

}  // namespace

void set_progress_reporter(ProgressReporter new_reporter) {
  std::lock_guard<std::mutex> lock(reporter_mu());
  reporter() = std::move(new_reporter);
}

ProgressReporter progress_reporter_for(uint64_t nbytes) {
  if (nbytes < kProgressMinBytes) return {};
  std::lock_guard<std::mutex> lock(reporter_mu());
  return reporter();
}

std::vector<std::pair<uint64_t, uint64_t>> transfer_pieces(uint64_t nbytes, uint64_t piece_bytes) {
  std::vector<std::pair<uint64_t, uint64_t>> pieces;
  for (uint64_t start = 0; start < nbytes; start += piece_bytes) {
    pieces.emplace_back(start, std::min(nbytes, start + piece_bytes));
  }
  return pieces;
}

}  // namespace mycelya
