#!/usr/bin/env bash
# SPDX-License-Identifier: AGPL-3.0-or-later
# Fuzzes the server's decoding and execution path (server/fuzz/executor_fuzzer.cpp).
#
#   tools/fuzz.sh                  until stopped (Ctrl-C)
#   tools/fuzz.sh --seconds N      for N seconds (CI runs 120)
#
# Builds the target with clang-14 and -fsanitize=fuzzer,address,undefined
# (--config=fuzz) in a Bazel output base of its own, so the ordinary gcc build
# is left as it is, then runs it on the committed seeds (server/fuzz/corpus)
# plus the inputs earlier runs found ($MYCELYA_HOME/fuzz/corpus). A finding
# stops it with a report and the input in $MYCELYA_HOME/fuzz/findings: once
# fixed, copy that input into server/fuzz/corpus, where
# //server/fuzz:executor_fuzzer_corpus_test replays it in every test run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
seconds=0
if [ "${1:-}" = "--seconds" ]; then
  seconds="${2:?--seconds needs a number}"
elif [ -n "${1:-}" ]; then
  echo "usage: tools/fuzz.sh [--seconds N]" >&2
  exit 2
fi
source tools/bazel_env.sh
home="${MYCELYA_HOME:-$HOME/.cache/mycelya}"
fuzz_bazel=(bazel --output_base="$home/bazel-fuzz")
bazel_quiet "${fuzz_bazel[@]}" build "${BAZEL_CACHE_FLAGS[@]}" --config=fuzz //server/fuzz:executor_fuzzer
binary="$("${fuzz_bazel[@]}" info --config=fuzz bazel-bin 2>/dev/null)/server/fuzz/executor_fuzzer"
mkdir -p "$home/fuzz/corpus" "$home/fuzz/findings"
# Huge allocations a hostile batch asks for must fail as errors (the
# executor's bad_alloc path), not abort the run.
export ASAN_OPTIONS="allocator_may_return_null=1:detect_leaks=1:${ASAN_OPTIONS:-}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:${UBSAN_OPTIONS:-}"
# The first folder takes what the run finds; the seeds stay untouched.
exec "$binary" -max_total_time="$seconds" -timeout=30 -rss_limit_mb=4096 -max_len=65536 \
  -print_final_stats=1 -artifact_prefix="$home/fuzz/findings/" \
  "$home/fuzz/corpus" server/fuzz/corpus
