// SPDX-License-Identifier: AGPL-3.0-or-later
//
// StateFolder: what a save writes is what a restore lists and reads, a save
// cut short reports what it did not write, and files that are not whole or
// not ours are refused rather than read.
#include "server/state_folder.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

namespace mycelya {
namespace {

std::string make_temp_folder() {
  const char* base = std::getenv("TEST_TMPDIR");
  std::string path = std::string(base ? base : "/tmp") + "/state-XXXXXX";
  EXPECT_NE(mkdtemp(path.data()), nullptr);
  return path;
}

void write_bytes(StateFolder& folder, uint64_t id, const std::string& bytes,
                 const std::string& device = "cpu") {
  folder.write_storage(id, device, bytes.size(), [&](const StateFolder::ByteSink& write) {
    // In two pieces, as a device storage comes through the host.
    write(bytes.data(), bytes.size() / 2);
    write(bytes.data() + bytes.size() / 2, bytes.size() - bytes.size() / 2);
  });
}

std::string read_bytes(const StateFolder& folder, const StateFolder::Saved& saved) {
  std::string bytes;
  folder.read_storage(saved, 3, [&](const char* data, size_t n) { bytes.append(data, n); });
  return bytes;
}

bool exists(const std::string& path) {
  struct stat info {};
  return stat(path.c_str(), &info) == 0;
}

TEST(StateFolderTest, StateKeysAreExactly64LowercaseHexDigits) {
  EXPECT_TRUE(valid_state_key(std::string(64, 'a')));
  EXPECT_TRUE(valid_state_key("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"));
  EXPECT_FALSE(valid_state_key(""));
  EXPECT_FALSE(valid_state_key(std::string(63, 'a')));
  EXPECT_FALSE(valid_state_key(std::string(65, 'a')));
  EXPECT_FALSE(valid_state_key(std::string(64, 'A')));
  EXPECT_FALSE(valid_state_key("../" + std::string(61, 'a')));
  EXPECT_FALSE(valid_state_key(std::string(63, 'a') + "/"));
}

TEST(StateFolderTest, WhatASaveWritesARestoreReads) {
  StateFolder folder(make_temp_folder() + "/a/b/session");  // parents are made too
  folder.begin_save({7, 9, 12}, 42);
  write_bytes(folder, 7, "seven bytes");
  write_bytes(folder, 9, std::string(1000, '\x09'), "cuda:0");
  write_bytes(folder, 12, "");
  folder.end_save();

  const StateFolder::Contents contents = folder.list();
  EXPECT_TRUE(contents.saved);
  EXPECT_EQ(contents.commands_run, 42u);
  ASSERT_EQ(contents.storages.size(), 3u);
  EXPECT_TRUE(contents.missing.empty());
  EXPECT_EQ(contents.storages[0].id, 7u);
  EXPECT_EQ(contents.storages[1].device, "cuda:0");
  EXPECT_EQ(contents.storages[2].nbytes, 0u);
  EXPECT_EQ(read_bytes(folder, contents.storages[0]), "seven bytes");
  EXPECT_EQ(read_bytes(folder, contents.storages[1]), std::string(1000, '\x09'));
  EXPECT_EQ(read_bytes(folder, contents.storages[2]), "");

  folder.clear();
  EXPECT_FALSE(exists(folder.path()));
  EXPECT_FALSE(folder.list().saved);  // nothing saved: nothing to restore
}

TEST(StateFolderTest, ASaveCutShortReportsWhatItDidNotWrite) {
  StateFolder folder(make_temp_folder());
  folder.begin_save({1, 2, 3}, 3);
  write_bytes(folder, 1, "one");
  // The server dies while writing storage 2: its partial file never became 2.storage.
  std::ofstream(folder.path() + "/2.storage.partial") << "half";
  const StateFolder::Contents contents = folder.list();
  ASSERT_EQ(contents.storages.size(), 1u);
  EXPECT_EQ(contents.storages[0].id, 1u);
  EXPECT_EQ(contents.missing, (std::vector<uint64_t>{2, 3}));
}

TEST(StateFolderTest, ANewSaveReplacesWhatAnEarlierOneLeft) {
  StateFolder folder(make_temp_folder());
  folder.begin_save({1, 2}, 2);
  write_bytes(folder, 1, "old");
  write_bytes(folder, 2, "old");
  folder.begin_save({2}, 1);
  write_bytes(folder, 2, "new");
  const StateFolder::Contents contents = folder.list();
  ASSERT_EQ(contents.storages.size(), 1u);
  EXPECT_EQ(read_bytes(folder, contents.storages[0]), "new");
}

TEST(StateFolderTest, FilesThatAreNotWholeOrNotOursAreRefused) {
  StateFolder folder(make_temp_folder());
  folder.begin_save({5}, 1);
  write_bytes(folder, 5, "0123456789");
  const std::string path = folder.path() + "/5.storage";
  // Truncated: the header promises more bytes than the file holds.
  ASSERT_EQ(truncate(path.c_str(), 30), 0);
  EXPECT_THROW(folder.list(), std::runtime_error);
  // Renamed: the ID in the header is not the one in the name.
  write_bytes(folder, 5, "0123456789");
  ASSERT_EQ(rename(path.c_str(), (folder.path() + "/6.storage").c_str()), 0);
  EXPECT_THROW(folder.list(), std::runtime_error);
  ASSERT_EQ(unlink((folder.path() + "/6.storage").c_str()), 0);
  // Not a storage file at all.
  std::ofstream(path) << "hello, this is not a storage";
  EXPECT_THROW(folder.list(), std::runtime_error);
  ASSERT_EQ(unlink(path.c_str()), 0);
  // A manifest that claims more IDs than it holds, and one cut short.
  std::ofstream(folder.path() + "/manifest")
      << std::string("MYCMANI1") + std::string(8, '\0') + "\xff\xff\xff\xff\xff\xff\xff\x7f";
  EXPECT_THROW(folder.list(), std::runtime_error);
  std::ofstream(folder.path() + "/manifest") << "MYCMANI1";
  EXPECT_THROW(folder.list(), std::runtime_error);
}

TEST(StateFolderTest, UsageBesideCountsOtherSessionsFoldersNotItsOwn) {
  const std::string root = make_temp_folder();
  StateFolder mine(root + "/" + std::string(64, 'a'));
  StateFolder other(root + "/" + std::string(64, 'b'));
  other.begin_save({1}, 1);
  write_bytes(other, 1, std::string(10000, 'x'));
  mine.begin_save({1}, 1);
  write_bytes(mine, 1, std::string(50000, 'x'));
  std::ofstream(root + "/not-a-key") << "ignored";
  const StateFolder::Usage usage = mine.usage_beside();
  EXPECT_EQ(usage.folders, 1u);
  EXPECT_GE(usage.bytes, 10000u);
  EXPECT_LT(usage.bytes, 50000u);
}

}  // namespace
}  // namespace mycelya
