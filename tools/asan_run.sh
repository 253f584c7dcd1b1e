#!/usr/bin/env bash
# SPDX-License-Identifier: AGPL-3.0-or-later
# Runs one test under tools/asan.sh (Bazel's --run_under). The test's own
# process tree gets the sanitizer runtime preloaded ($ASAN_PRELOAD: Python is
# not built with ASan), and every process writes its reports to a file named
# for its executable. A report from Python, from a mycelya-server or from a
# C++ test binary fails the test; one from a system tool a test runs (tr, sed:
# they inherit the preload, and some free nothing at exit) is not our code's,
# and is listed by name only. Bazel's own test-setup shell stays outside.
#
# One kind of report is the sanitizer's own crash, not a finding: LeakSanitizer's
# stop-the-world tracer sometimes faults while gRPC's pool threads are exiting
# at process exit ("Tracer caught signal 11 ... LeakSanitizer has encountered a
# fatal error", google/sanitizers#1353, open). The leak check did not run, so
# the test is run again, at most twice more; every report of a later run counts
# as before, and a third tracer crash fails the test.
set -u

# Runs the test once with a fresh folder for its reports; returns its status.
run_once() {
  local reports="$1"
  shift
  rm -rf "$reports"
  mkdir -p "$reports"
  LD_PRELOAD="$ASAN_PRELOAD" \
    ASAN_OPTIONS="$ASAN_OPTIONS:log_path=$reports/asan:log_exe_name=1" \
    UBSAN_OPTIONS="$UBSAN_OPTIONS:log_path=$reports/ubsan:log_exe_name=1" \
    "$@"
}

# Our reports (not a system tool's), one path per line.
our_reports() {
  local report exe
  shopt -s nullglob
  for report in "$1"/*; do
    # <asan|ubsan>.<executable>.<pid>
    exe="${report#"$1"/*.}"
    exe="${exe%.*}"
    case "$exe" in
      python* | mycelya-server | *_test) echo "$report" ;;
      *) echo "asan_run: ignored a report from $exe, a system tool the test ran" >&2 ;;
    esac
  done
}

# True when every one of our reports is only the leak tracer's own crash.
only_tracer_crashes() {
  local report
  [ "$#" -gt 0 ] || return 1
  for report in "$@"; do
    grep -q "LeakSanitizer has encountered a fatal error" "$report" || return 1
    grep -q "Tracer caught signal" "$report" || return 1
    grep -qE "ERROR: (AddressSanitizer|LeakSanitizer: detected)|runtime error:" "$report" && return 1
  done
  return 0
}

reports="$TEST_TMPDIR/sanitizer-reports"
for attempt in 1 2 3; do
  run_once "$reports" "$@"
  status=$?
  mapfile -t ours < <(our_reports "$reports")
  if [ "$attempt" -lt 3 ] && only_tracer_crashes "${ours[@]}"; then
    echo "asan_run: LeakSanitizer's tracer crashed at exit (run $attempt; not a finding):" >&2
    cat "${ours[@]}" >&2
    echo "asan_run: running the test again" >&2
    continue
  fi
  break
done
for report in "${ours[@]}"; do
  echo "asan_run: report from ${report##*/}:" >&2
  cat "$report" >&2
  [ "$status" -ne 0 ] || status=1
done
exit "$status"
