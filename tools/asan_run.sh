#!/usr/bin/env bash
# SPDX-License-Identifier: AGPL-3.0-or-later
# Runs one test under tools/asan.sh (Bazel's --run_under). The test's own
# process tree gets the sanitizer runtime preloaded ($ASAN_PRELOAD: Python is
# not built with ASan), and every process writes its reports to a file named
# for its executable. A report from Python, from a mycelya-server or from a
# C++ test binary fails the test; one from a system tool a test runs (tr, sed:
# they inherit the preload, and some free nothing at exit) is not our code's,
# and is listed by name only. Bazel's own test-setup shell stays outside.
set -u
reports="$TEST_TMPDIR/sanitizer-reports"
mkdir -p "$reports"
LD_PRELOAD="$ASAN_PRELOAD" \
  ASAN_OPTIONS="$ASAN_OPTIONS:log_path=$reports/asan:log_exe_name=1" \
  UBSAN_OPTIONS="$UBSAN_OPTIONS:log_path=$reports/ubsan:log_exe_name=1" \
  "$@"
status=$?
shopt -s nullglob
for report in "$reports"/*; do
  # <asan|ubsan>.<executable>.<pid>
  exe="${report#"$reports"/*.}"
  exe="${exe%.*}"
  case "$exe" in
    python* | mycelya-server | *_test)
      echo "asan_run: report from $exe:" >&2
      cat "$report" >&2
      [ "$status" -ne 0 ] || status=1
      ;;
    *) echo "asan_run: ignored a report from $exe, a system tool the test ran" >&2 ;;
  esac
done
exit "$status"
