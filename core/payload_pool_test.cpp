// SPDX-License-Identifier: AGPL-3.0-or-later
#include "core/payload_pool.h"

#include <gtest/gtest.h>

namespace mycelya {
namespace {

constexpr size_t kMiB = 1 << 20;

TEST(PayloadPoolTest, ReleasedBufferIsHandedOutAgain) {
  PayloadPool pool(64 * kMiB);
  std::string first = pool.acquire(8 * kMiB);
  ASSERT_EQ(first.size(), 8 * kMiB);
  const char* memory = first.data();
  pool.release(std::move(first));
  EXPECT_EQ(pool.pooled_bytes(), 8 * kMiB);

  // A slightly smaller request reuses the same memory, sized as asked.
  std::string second = pool.acquire(6 * kMiB);
  EXPECT_EQ(second.data(), memory);
  EXPECT_EQ(second.size(), 6 * kMiB);
  EXPECT_EQ(pool.pooled_bytes(), 0u);
}

TEST(PayloadPoolTest, BufferMoreThanTwiceTheRequestIsNotUsed) {
  PayloadPool pool(64 * kMiB);
  std::string big = pool.acquire(16 * kMiB);
  const char* memory = big.data();
  pool.release(std::move(big));
  std::string small = pool.acquire(2 * kMiB);
  EXPECT_NE(small.data(), memory);
  EXPECT_EQ(pool.pooled_bytes(), 16 * kMiB);
}

TEST(PayloadPoolTest, SmallBuffersAreLeftToMalloc) {
  PayloadPool pool(64 * kMiB);
  pool.release(pool.acquire(1000));
  EXPECT_EQ(pool.pooled_bytes(), 0u);
  EXPECT_EQ(pool.acquire(1000).size(), 1000u);
}

TEST(PayloadPoolTest, KeepsAtMostItsLimitDroppingTheOldest) {
  PayloadPool pool(20 * kMiB);
  std::string a = pool.acquire(8 * kMiB), b = pool.acquire(8 * kMiB), c = pool.acquire(8 * kMiB);
  const char* newest = c.data();
  pool.release(std::move(a));
  pool.release(std::move(b));
  pool.release(std::move(c));  // a is dropped to make room
  EXPECT_EQ(pool.pooled_bytes(), 16 * kMiB);
  pool.release(pool.acquire(32 * kMiB));  // bigger than the whole pool: freed
  EXPECT_EQ(pool.pooled_bytes(), 16 * kMiB);
  EXPECT_EQ(pool.acquire(8 * kMiB).data(), newest);
}

}  // namespace
}  // namespace mycelya
