// SPDX-License-Identifier: AGPL-3.0-or-later
//
// Plugin loader tests: finding providers on the search path, mapping file
// names to provider names, and refusing files that are not provider plugins.
#include "core/plugin_loader.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "tests/cc/gtest_helpers.h"

namespace mycelya {
namespace {

bool has(const std::vector<std::string>& items, const std::string& item) {
  return std::find(items.begin(), items.end(), item) != items.end();
}

std::string runfile(const std::string& path) {
  const char* srcdir = std::getenv("TEST_SRCDIR");
  const char* workspace = std::getenv("TEST_WORKSPACE");
  std::string relative = path;
  if (srcdir != nullptr && workspace != nullptr) {
    relative = std::string(srcdir) + "/" + workspace + "/" + path;
  }
  char* resolved = realpath(relative.c_str(), nullptr);
  if (resolved == nullptr) return relative;
  std::string absolute = resolved;
  std::free(resolved);
  return absolute;
}

std::string dirname_of(const std::string& path) { return path.substr(0, path.rfind('/')); }

// A fresh folder under the test's temporary directory.
std::string make_temp_dir() {
  const char* tmp = std::getenv("TEST_TMPDIR");
  std::string pattern = std::string(tmp ? tmp : "/tmp") + "/plugins.XXXXXX";
  std::vector<char> buffer(pattern.begin(), pattern.end());
  buffer.push_back('\0');
  if (mkdtemp(buffer.data()) == nullptr) return "";
  return buffer.data();
}

const std::string& mock_plugin() {
  static const std::string path = runfile("providers/mock/libmycelya_provider_mock.so");
  return path;
}

struct NoProgress final : StartProgress {
  void stage(const std::string& /*what*/) override {}
};

class PluginLoaderTest : public ::testing::Test {
 protected:
  // The mock plugin's folder through $MYCELYA_PROVIDER_PATH (with empty and
  // missing entries, which are skipped), and a folder of odd files through
  // add_plugin_dir.
  static void SetUpTestSuite() {
    const std::string path = "::/no/such/folder:" + dirname_of(mock_plugin()) + ":";
    ASSERT_EQ(setenv("MYCELYA_PROVIDER_PATH", path.c_str(), 1), 0);

    odd_dir_ = new std::string(make_temp_dir());
    ASSERT_FALSE(odd_dir_->empty());
    const std::string& dir = *odd_dir_;
    // '_' in a file name is '-' in the provider name.
    ASSERT_EQ(symlink(mock_plugin().c_str(), (dir + "/libmycelya_provider_local_cuda.so").c_str()),
              0);
    // Not a shared object at all.
    std::ofstream(dir + "/libmycelya_provider_garbage.so") << "not an ELF file";
    // A shared object without the provider entry points.
    ASSERT_EQ(symlink(runfile("proto/libmycelya_wire.so").c_str(),
                      (dir + "/libmycelya_provider_no_entry.so").c_str()),
              0);
    // Names that are not plugins.
    std::ofstream(dir + "/libmycelya_provider_.so") << "";
    std::ofstream(dir + "/libmycelya_provider_old.so.1") << "";
    std::ofstream(dir + "/libsomething_else.so") << "";
    add_plugin_dir(dir);
    add_plugin_dir(dir);  // twice is once
  }

  static std::string* odd_dir_;
};

std::string* PluginLoaderTest::odd_dir_ = nullptr;

TEST_F(PluginLoaderTest, AvailableProvidersFindsMock) {
  const std::vector<std::string> providers = available_providers();
  EXPECT_TRUE(has(providers, "mock"));
  EXPECT_TRUE(std::is_sorted(providers.begin(), providers.end()));
}

TEST_F(PluginLoaderTest, FileNamesMapToProviderNames) {
  const std::vector<std::string> providers = available_providers();
  EXPECT_TRUE(has(providers, "local-cuda"));
  EXPECT_TRUE(has(providers, "garbage"));
  EXPECT_TRUE(has(providers, "no-entry"));
  EXPECT_FALSE(has(providers, ""));
  EXPECT_FALSE(has(providers, "old"));
  EXPECT_FALSE(has(providers, "old.so.1"));
  EXPECT_EQ(std::count(providers.begin(), providers.end(), "mock"), 1);
}

TEST_F(PluginLoaderTest, LoadsMockOnce) {
  Provider& provider = load_provider("mock");
  EXPECT_EQ(provider.name(), "mock");
  EXPECT_EQ(&load_provider("mock"), &provider);

  MachineSpec spec;
  NoProgress progress;
  auto session = provider.start(spec, progress);
  EXPECT_EQ(session->devices(), std::vector<std::string>{"cpu"});
  session->stop();
}

TEST_F(PluginLoaderTest, DefaultValidateRefusesOptions) {
  Provider& provider = load_provider("mock");
  MachineSpec spec;
  provider.validate(spec);
  spec.options["address"] = "gpu-box:50051";
  try {
    provider.validate(spec);
    FAIL() << "an option reached a provider that takes none";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("takes no options, got 'address'"), std::string::npos)
        << e.what();
  }
}

TEST_F(PluginLoaderTest, DashedNameLoadsTheUnderscoredFile) {
  Provider& provider = load_provider("local-cuda");
  EXPECT_EQ(provider.name(), "mock");  // the symlinked mock plugin
  EXPECT_NE(&provider, &load_provider("mock"));
}

TEST_F(PluginLoaderTest, UnknownProviderListsTheFoundOnes) {
  const std::string message =
      message_of<std::invalid_argument>([] { load_provider("does-not-exist"); });
  EXPECT_TRUE(Contains(message, "Unknown provider 'does-not-exist'"));
  EXPECT_TRUE(Contains(message, "mock"));
  EXPECT_TRUE(Contains(message, "local-cuda"));
}

TEST_F(PluginLoaderTest, FileThatIsNotASharedObjectFailsToLoad) {
  const std::string message = message_of<std::runtime_error>([] { load_provider("garbage"); });
  EXPECT_TRUE(Contains(message, "Could not load provider 'garbage'"));
  // A failed load is not remembered as loaded.
  EXPECT_THROW(load_provider("garbage"), std::runtime_error);
}

TEST_F(PluginLoaderTest, SharedObjectWithoutEntryPointsIsRefused) {
  const std::string message = message_of<std::runtime_error>([] { load_provider("no-entry"); });
  EXPECT_TRUE(Contains(message, "does not export"));
}

}  // namespace
}  // namespace mycelya
