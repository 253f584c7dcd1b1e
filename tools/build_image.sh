#!/usr/bin/env bash
# SPDX-License-Identifier: AGPL-3.0-or-later
# Builds the server image (deploy/Dockerfile) from this checkout's wheel.
#
#   tools/build_image.sh [TAG] [docker build flags...]   (default tag mycelya-server:<version>)
#
# Needs Docker; nothing in CI runs it (tests/test_wheel.py runs the image's
# install and start commands in a fresh virtual environment instead).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source tools/bazel_env.sh
bazel build "${BAZEL_CACHE_FLAGS[@]}" //python:wheel
version="$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' python/mycelya_torch/_version.py)"
tag="${1:-mycelya-server:$version}"
shift || true
context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
cp deploy/Dockerfile deploy/install-server.sh deploy/entrypoint.sh bazel-bin/python/wheel/*.whl "$context/"
docker build -t "$tag" "$@" "$context"
echo "built $tag"
