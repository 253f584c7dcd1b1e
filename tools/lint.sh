#!/usr/bin/env bash
# SPDX-License-Identifier: AGPL-3.0-or-later
# Style checks: clang-format on C++, ruff on Python. --fix rewrites in place.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="$(bash tools/setup.sh | tail -n 1)"
mapfile -t cpp < <(git ls-files '*.cpp' '*.h')
if [ "${1:-}" = "--fix" ]; then
  clang-format -i "${cpp[@]}"
  "$VENV/bin/ruff" format .
  "$VENV/bin/ruff" check --fix .
else
  clang-format --dry-run -Werror "${cpp[@]}"
  "$VENV/bin/ruff" format --check .
  "$VENV/bin/ruff" check .
fi
