#!/usr/bin/env bash
# SPDX-License-Identifier: AGPL-3.0-or-later
# Sourced by the entry points: runs setup, then puts its virtual environment
# first on PATH so that Bazel, its repository rules and its tests all see the
# python3 that has torch. Bazel's disk cache lives outside the clone so that a
# fresh clone (as CI uses) reuses what earlier builds compiled.
VENV="$(bash "$(dirname "${BASH_SOURCE[0]}")/setup.sh" | tail -n 1)"
export PATH="$VENV/bin:$PATH"
export MYCELYA_PYTHON="$VENV/bin/python3"
BAZEL_CACHE_FLAGS=(--disk_cache="${MYCELYA_HOME:-$HOME/.cache/mycelya}/bazel-disk-cache")
QUIET_SANDBOX_AWK="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/quiet_sandbox.awk"

# Runs a command (bazel ...) with the sandbox's debug log filtered out of its
# stdout and stderr (tools/quiet_sandbox.awk); returns the command's status
# once both filters have written everything (a bare `wait` would not wait
# for the first of two process substitutions, and lose its last lines).
# The command gets the filters' pipes as its stdout and stderr only: a Bazel
# server it starts would otherwise inherit the pipes' own descriptors, keep
# them open for hours, and the filters would never see their end.
bazel_quiet() {
  local status=0 out err out_filter err_filter
  exec {out}> >(awk -f "$QUIET_SANDBOX_AWK")
  out_filter=$!
  exec {err}> >(awk -f "$QUIET_SANDBOX_AWK" >&2)
  err_filter=$!
  "$@" >&"$out" 2>&"$err" {out}>&- {err}>&- || status=$?
  exec {out}>&- {err}>&-
  wait "$out_filter" "$err_filter" || true
  return "$status"
}
