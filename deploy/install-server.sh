#!/bin/sh
# SPDX-License-Identifier: AGPL-3.0-or-later
#
# Installs mycelya-server into a fresh virtual environment: the server image's
# install step (deploy/Dockerfile), and what tests/test_wheel.py runs to check
# it, since no Docker engine runs in CI.
#
#   install-server.sh VENV WHEEL
#
# TORCH_SPEC picks torch and, split into words, any pip options with it
# (default torch==2.13.0). pip takes it from its configured index and
# find-links (PIP_* variables and pip's config files, as usual): in the image,
# PyPI, whose torch 2.13.0 for Linux x86_64 is the CUDA 13.0 build, with
# nvidia-* wheels that bring the CUDA runtime; in tests/test_wheel.py, what
# the test machine's pip is configured with (where tests run offline, a local
# mirror that holds the CPU build).
set -eu
venv="$1"
wheel="$2"
python3 -m venv "$venv"
# shellcheck disable=SC2086 # split on purpose: a spec and its pip options
"$venv/bin/pip" install --no-cache-dir --quiet ${TORCH_SPEC:-torch==2.13.0}
# After torch, so that pip finds the wheel's torch requirement met.
"$venv/bin/pip" install --no-cache-dir --quiet "$wheel"
