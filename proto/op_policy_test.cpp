// SPDX-License-Identifier: AGPL-3.0-or-later
#include "proto/op_policy.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <gtest/gtest.h>

#include <string>

namespace mycelya {
namespace {

std::optional<std::string> reason_for(const char* name, const char* overload) {
  return refusal_reason(c10::Dispatcher::singleton().findSchemaOrThrow(name, overload).schema());
}

TEST(OpPolicy, RefusesOpsThatReachFilesOrProcesses) {
  const auto from_file = reason_for("aten::from_file", "");
  ASSERT_TRUE(from_file.has_value());
  EXPECT_NE(from_file->find("torch.from_file(...).to(device)"), std::string::npos) << *from_file;
  EXPECT_TRUE(reason_for("aten::from_file", "out").has_value());
  EXPECT_TRUE(reason_for("aten::_print", "").has_value());
}

TEST(OpPolicy, RefusesOpsThatHandOutUnwrittenMemory) {
  for (const auto& [name, overload] :
       {std::pair<const char*, const char*>{"aten::empty", "memory_format"},
        {"aten::empty_strided", ""},
        {"aten::new_empty", ""},
        {"aten::empty_like", ""},
        {"aten::_empty_affine_quantized", ""},
        {"aten::resize_", ""},
        {"aten::resize_as_", ""},
        {"aten::_resize_output_", ""},
        {"aten::set_", "source_Storage"},
        {"aten::set_", "source_Tensor"},
        {"aten::set_", ""}}) {
    const auto reason = reason_for(name, overload);
    ASSERT_TRUE(reason.has_value()) << name << "." << overload;
    EXPECT_NE(reason->find("without writing it"), std::string::npos) << *reason;
  }
}

TEST(OpPolicy, RefusesOtherNamespaces) {
  const auto reason = reason_for("profiler::_record_function_exit", "");
  ASSERT_TRUE(reason.has_value());
  EXPECT_NE(reason->find("ATen ops only"), std::string::npos) << *reason;
}

TEST(OpPolicy, AllowsOrdinaryOps) {
  EXPECT_FALSE(reason_for("aten::add", "Tensor").has_value());
  EXPECT_FALSE(reason_for("aten::add", "out").has_value());
  EXPECT_FALSE(reason_for("aten::zeros", "").has_value());
  EXPECT_FALSE(reason_for("aten::full", "").has_value());
  EXPECT_FALSE(reason_for("aten::mm", "").has_value());
  EXPECT_FALSE(reason_for("aten::embedding_dense_backward", "").has_value());
  EXPECT_FALSE(reason_for("aten::index_put_", "").has_value());
  EXPECT_FALSE(reason_for("aten::pad", "").has_value());
}

}  // namespace
}  // namespace mycelya
