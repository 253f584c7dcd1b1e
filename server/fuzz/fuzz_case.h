// SPDX-License-Identifier: AGPL-3.0-or-later
//
// One input of the executor fuzzer (server/fuzz/executor_fuzzer.cpp): what a
// session receives between two responses, a Batch with its payloads and then
// a Request, framed as
//   u32 batch size, batch bytes,
//   u32 payload count, then per payload: u32 size, bytes,
//   u32 request size, request bytes,
// sizes little-endian. The mock provider writes real ones for the seed corpus
// (MYCELYA_MOCK_CAPTURE_DIR). Decoding never fails: a size beyond the input
// takes what is left, so every mutation still reaches the executor.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace mycelya {

struct FuzzCase {
  std::string batch;  // an encoded wire::Batch; empty: none
  std::vector<std::string> payloads;
  std::string request;  // an encoded wire::Request; empty: none
};

// At most this many payloads are decoded: a batch names payloads by index.
constexpr uint32_t kMaxFuzzPayloads = 64;

inline void append_u32(std::string* out, uint32_t value) {
  for (int i = 0; i < 4; ++i) out->push_back(static_cast<char>(value >> (8 * i)));
}

inline void append_fuzz_field(std::string* out, const std::string& bytes) {
  append_u32(out, static_cast<uint32_t>(bytes.size()));
  out->append(bytes);
}

inline std::string encode_fuzz_case(const FuzzCase& fuzz_case) {
  std::string out;
  append_fuzz_field(&out, fuzz_case.batch);
  append_u32(&out, static_cast<uint32_t>(fuzz_case.payloads.size()));
  for (const std::string& payload : fuzz_case.payloads) append_fuzz_field(&out, payload);
  append_fuzz_field(&out, fuzz_case.request);
  return out;
}

inline FuzzCase decode_fuzz_case(const uint8_t* data, size_t size) {
  size_t at = 0;
  const auto read_u32 = [&]() -> uint32_t {
    uint32_t value = 0;
    for (int i = 0; i < 4 && at < size; ++i, ++at)
      value |= static_cast<uint32_t>(data[at]) << (8 * i);
    return value;
  };
  const auto read_field = [&]() {
    const size_t wanted = read_u32();
    const size_t n = wanted < size - at ? wanted : size - at;
    std::string field(reinterpret_cast<const char*>(data) + at, n);
    at += n;
    return field;
  };
  FuzzCase fuzz_case;
  fuzz_case.batch = read_field();
  uint32_t count = read_u32();
  if (count > kMaxFuzzPayloads) count = kMaxFuzzPayloads;
  for (uint32_t i = 0; i < count; ++i) fuzz_case.payloads.push_back(read_field());
  fuzz_case.request = read_field();
  return fuzz_case;
}

}  // namespace mycelya
