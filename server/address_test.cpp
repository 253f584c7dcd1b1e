// SPDX-License-Identifier: AGPL-3.0-or-later
#include "server/address.h"

#include <gtest/gtest.h>

namespace mycelya {
namespace {

TEST(LocalAddressTest, LoopbackAndUnixSocketsAreLocal) {
  for (const char* address : {"127.0.0.1:0", "127.1.2.3:50051", "localhost:80", "[::1]:9000",
                              "unix:/tmp/mycelya.sock", "unix-abstract:mycelya"}) {
    EXPECT_TRUE(is_local_address(address)) << address;
  }
  for (const char* address : {"0.0.0.0:0", "[::]:0", "10.0.0.7:50051", "example.com:443",
                              "128.0.0.1:1", "[::2]:1", "localhost.example.com:1"}) {
    EXPECT_FALSE(is_local_address(address)) << address;
  }
}

}  // namespace
}  // namespace mycelya
