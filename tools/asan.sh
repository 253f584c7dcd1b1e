#!/usr/bin/env bash
# SPDX-License-Identifier: AGPL-3.0-or-later
# The C++ tests and the Python suites that drive a real mycelya-server
# (local-cuda, and the server, runpod and modal providers' suites, whose
# plugins parse TLS, HTTP and JSON from outside), built with AddressSanitizer
# and UBSan (--config=asan, gcc) in a Bazel output base of their own. Any
# report fails its test.
#
#   tools/asan.sh [bazel test flags]
#
# Python is not built with ASan, so the runtime is preloaded into it (with
# libstdc++, whose __cxa_throw ASan must find at start-up to intercept), and leak
# checking is off (CPython keeps its objects to the end by design); the
# fuzzer (tools/fuzz.sh) checks the executor for leaks instead.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source tools/bazel_env.sh
home="${MYCELYA_HOME:-$HOME/.cache/mycelya}"
asan_bazel=(bazel --output_base="$home/bazel-asan")
# A thousand servers (the soak) and the OpInfo sweep take too long here.
# Packages are named, not //...: from another output base, the clone's
# bazel-* links lead into the main one's.
targets="$("${asan_bazel[@]}" query \
  'kind(cc_test, //core/... + //proto/... + //providers/... + //server/...) + (attr(name, "local_cuda", kind(py_test, //tests:all)) - //tests:test_soak_local_cuda - //tests:opinfo_sweep_local_cuda) + //tests:test_server_provider + //tests:test_runpod + //tests:test_modal')"
bazel_quiet "${asan_bazel[@]}" test "${BAZEL_CACHE_FLAGS[@]}" --config=asan --nocache_test_results \
  --test_env=LD_PRELOAD="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libstdc++.so)" \
  --test_env=ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
  --test_env=UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  $targets "$@"
