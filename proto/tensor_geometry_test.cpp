// SPDX-License-Identifier: AGPL-3.0-or-later
#include "proto/tensor_geometry.h"

#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <stdexcept>
#include <vector>

namespace mycelya {
namespace {

TEST(RequiredStorageBytes, FollowsPyTorchsRule) {
  struct Case {
    std::vector<int64_t> sizes, strides;
    int64_t offset;
  };
  const std::vector<Case> cases = {
      {{}, {}, 0},
      {{}, {}, 5},
      {{4}, {1}, 0},
      {{4}, {3}, 2},
      {{2, 3}, {3, 1}, 0},
      {{2, 3}, {1, 2}, 7},
      {{3, 1}, {1, 100}, 0},
      {{5, 4}, {0, 1}, 1},
      {{0}, {1}, 0},
      {{0, 3}, {3, 1}, 9},
      {{2, 0, 2}, {5, 1, 1}, 4},
  };
  for (const Case& c : cases) {
    for (size_t itemsize : {1, 2, 4, 8}) {
      EXPECT_EQ(required_storage_bytes(c.sizes, c.strides, c.offset, itemsize),
                at::detail::computeStorageNbytes(c.sizes, c.strides, itemsize, c.offset))
          << "sizes " << c10::IntArrayRef(c.sizes) << " strides " << c10::IntArrayRef(c.strides)
          << " offset " << c.offset << " itemsize " << itemsize;
    }
  }
}

TEST(RequiredStorageBytes, AnEmptyViewNeedsNothingWhateverItsOffset) {
  EXPECT_EQ(required_storage_bytes({0}, {1}, 1000, 4), 0u);
  // As in PyTorch, a zero size wins over spans that would overflow.
  const int64_t huge = std::numeric_limits<int64_t>::max();
  EXPECT_EQ(required_storage_bytes({huge, 0}, {huge, 1}, 0, 8), 0u);
}

TEST(RequiredStorageBytes, RefusesWhatNoTensorCanHave) {
  EXPECT_THROW(required_storage_bytes({2}, {1, 1}, 0, 4), std::invalid_argument);
  EXPECT_THROW(required_storage_bytes({-1}, {1}, 0, 4), std::invalid_argument);
  EXPECT_THROW(required_storage_bytes({3}, {-1}, 2, 4), std::invalid_argument);
  EXPECT_THROW(required_storage_bytes({3}, {1}, -1, 4), std::invalid_argument);
  const int64_t huge = std::numeric_limits<int64_t>::max();
  EXPECT_THROW(required_storage_bytes({huge, 3}, {huge, 1}, 0, 1), std::invalid_argument);
  EXPECT_THROW(required_storage_bytes({2}, {1}, huge, 8), std::invalid_argument);
  EXPECT_THROW(required_storage_bytes({huge}, {1}, 0, 8), std::invalid_argument);
  // A negative size is refused even beside a zero one.
  EXPECT_THROW(required_storage_bytes({0, -2}, {1, 1}, 0, 4), std::invalid_argument);
}

TEST(RefDtype, AcceptsDenseTypesOnly) {
  EXPECT_EQ(ref_dtype(static_cast<int32_t>(c10::kFloat)), c10::kFloat);
  EXPECT_EQ(ref_dtype(static_cast<int32_t>(c10::kBool)), c10::kBool);
  EXPECT_THROW(ref_dtype(-1), std::invalid_argument);
  EXPECT_THROW(ref_dtype(static_cast<int32_t>(c10::ScalarType::NumOptions)), std::invalid_argument);
  EXPECT_THROW(ref_dtype(static_cast<int32_t>(c10::ScalarType::Undefined)), std::invalid_argument);
  EXPECT_THROW(ref_dtype(static_cast<int32_t>(c10::ScalarType::QInt8)), std::invalid_argument);
  wire::TensorRef ref = contiguous_ref(1, {2});
  ref.set_dtype(1000);
  EXPECT_THROW(required_storage_bytes(ref), std::invalid_argument);
}

TEST(DescribeTensor, CarriesTheWholeView) {
  at::Tensor base = at::zeros({4, 6}, at::kDouble);
  at::Tensor view = base.t().narrow(0, 1, 3);
  wire::TensorRef ref;
  write_tensor_ref(view, 42, 3, &ref);
  EXPECT_EQ(ref.storage_id(), 42u);
  EXPECT_EQ(ref.storage_nbytes(), base.nbytes());
  EXPECT_EQ(std::vector<int64_t>(ref.sizes().begin(), ref.sizes().end()), view.sizes().vec());
  EXPECT_EQ(std::vector<int64_t>(ref.strides().begin(), ref.strides().end()), view.strides().vec());
  EXPECT_EQ(ref.storage_offset(), view.storage_offset());
  EXPECT_EQ(ref.dtype(), static_cast<int32_t>(at::kDouble));
  EXPECT_EQ(ref.device(), 3);
  EXPECT_FALSE(ref.conj() || ref.neg());
  EXPECT_LE(required_storage_bytes(ref), ref.storage_nbytes());

  wire::TensorRef conj;
  write_tensor_ref(at::zeros({2}, at::kComplexFloat).conj(), 1, 0, &conj);
  EXPECT_TRUE(conj.conj());
}

TEST(ContiguousRef, FillsItsStorage) {
  const wire::TensorRef ref = contiguous_ref(7, {2, 0, 3}, c10::kHalf, 1);
  EXPECT_EQ(std::vector<int64_t>(ref.strides().begin(), ref.strides().end()),
            (std::vector<int64_t>{3, 3, 1}));
  EXPECT_EQ(ref.storage_nbytes(), 0u);
  const wire::TensorRef full = contiguous_ref(8, {2, 5}, c10::kHalf);
  EXPECT_EQ(full.storage_nbytes(), 20u);
  EXPECT_EQ(required_storage_bytes(full), full.storage_nbytes());
}

}  // namespace
}  // namespace mycelya
