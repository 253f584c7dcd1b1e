#!/usr/bin/env bash
# SPDX-License-Identifier: AGPL-3.0-or-later
#
# Installs everything mycelya-torch needs on a Debian machine, idempotently:
# Debian's build packages and a Python virtual environment with torch==2.13.0.
# A second run does nothing and takes about a second.
#
# Prints the virtual environment's folder on its last line for callers to use.
set -euo pipefail

MYCELYA_HOME="${MYCELYA_HOME:-$HOME/.cache/mycelya}"
VENV="$MYCELYA_HOME/venv"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

APT_PACKAGES=(
  bazel-bootstrap bazel-platforms g++ pkg-config
  protobuf-compiler protobuf-compiler-grpc libprotobuf-dev libgrpc++-dev libabsl-dev
  libgtest-dev libgmock-dev libbenchmark-dev clang-format openssl
  clang-14 libfuzzer-14-dev libclang-rt-14-dev
  libcurl4-openssl-dev nlohmann-json3-dev libssl-dev
)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  # dpkg prints a few lines per package even when asked to be quiet: they go
  # to a log, shown only if the install fails.
  apt_log="$(mktemp)"
  if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"; } >"$apt_log" 2>&1; then
    cat "$apt_log" >&2
    echo "setup: installing Debian packages failed (apt-get's output above)" >&2
    rm -f "$apt_log"
    exit 1
  fi
  rm -f "$apt_log"
  echo "setup: Debian packages installed" >&2
fi

# The venv is keyed by the requirements file, so a changed pin rebuilds it.
REQUIREMENTS="$REPO/tools/requirements.txt"
stamp="$VENV/.mycelya-requirements"
if ! [ -x "$VENV/bin/python" ] || ! cmp -s "$REQUIREMENTS" "$stamp"; then
  echo "setup: creating the Python environment in $VENV (torch==2.13.0, CPU build)" >&2
  mkdir -p "$MYCELYA_HOME"
  python3 -m venv "$VENV" >&2
  "$VENV/bin/pip" install -qq --disable-pip-version-check -r "$REQUIREMENTS" >&2
  cp "$REQUIREMENTS" "$stamp"
  echo "setup: Python environment ready" >&2
fi
echo "$VENV"
