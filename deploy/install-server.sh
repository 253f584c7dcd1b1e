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
# (default torch==2.13.0: on PyPI, the CUDA 13.0 build for Linux x86_64, whose
# nvidia-* wheels bring the CUDA runtime); PIP_* variables configure pip as usual.
set -eu
venv="$1"
wheel="$2"
python3 -m venv "$venv"
# shellcheck disable=SC2086 # split on purpose: a spec and its pip options
"$venv/bin/pip" install --no-cache-dir --quiet ${TORCH_SPEC:-torch==2.13.0}
# After torch, so that pip finds the wheel's torch requirement met.
"$venv/bin/pip" install --no-cache-dir --quiet "$wheel"
