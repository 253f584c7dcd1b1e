#!/usr/bin/env bash
# SPDX-License-Identifier: AGPL-3.0-or-later
# Runs examples/quickstart.py on the default provider (mock).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source tools/bazel_env.sh
bazel_quiet bazel run "${BAZEL_CACHE_FLAGS[@]}" //examples:quickstart -- "$@"
