#!/usr/bin/env bash
# SPDX-License-Identifier: AGPL-3.0-or-later
# The whole test suite: C++ (GoogleTest) and Python (pytest), through Bazel,
# in its default sandbox. Extra arguments go to `bazel test`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source tools/bazel_env.sh
# Builds come from the disk cache, but tests always run: a result cached by an
# earlier run on this machine proves nothing about this one.
bazel_quiet bazel test "${BAZEL_CACHE_FLAGS[@]}" --nocache_test_results //... "$@"
