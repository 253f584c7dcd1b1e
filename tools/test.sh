#!/usr/bin/env bash
# SPDX-License-Identifier: AGPL-3.0-or-later
# The whole test suite: C++ (GoogleTest) and Python (pytest), through Bazel.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source tools/bazel_env.sh
exec bazel test "${BAZEL_CACHE_FLAGS[@]}" //... "$@"
